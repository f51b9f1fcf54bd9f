"""A diagonal linear recurrence over channels, h_t = a_t * h_{t-1} + x_t, the scan under
the Real-Gated Linear Recurrent Unit (De et al. 2024, "Griffin: Mixing Gated Linear
Recurrences with Local Attention for Efficient Language Models") and other gated RNNs whose
state is a vector.

The parallel form is a log-depth scan (``ops.scan``) with the pair rule
(a, h) then (a', h') = (a a', a' h + h'): ceil(log2 L) rounds of elementwise work. The
recurrent form is the reference loop.
"""
from __future__ import annotations

import torch

from attnarena._validate import entering
from attnarena.ops._checks import check_state, compute_dtype
from attnarena.ops.scan import associative_scan

DIAGONAL_FORMS = ("parallel", "recurrent")


def diagonal_recurrence(x, log_a, *, form="parallel", initial_state=None, return_state=False):
    """h_t = exp(log_a_t) * h_{t-1} + x_t, elementwise.

    Args:
        x: (B, L, C) inputs.
        log_a: (B, L, C), <= 0: the log of each step's decay (0 keeps the state).
        form: "parallel" (log-depth scan) or "recurrent" (reference loop).
        initial_state: (B, C) or None (zeros).
        return_state: also return h_L.

    Returns:
        h (B, L, C) in the dtype of x, or (h, h_L).
    """
    for name, t in (("x", x), ("log_a", log_a)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 3:
            got = (f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor)
                   else type(t).__name__)
            raise ValueError(f"{name} must be a float tensor (batch, length, channels), got {got}")
    if log_a.shape != x.shape:
        raise ValueError(f"log_a must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(log_a.shape)}")
    if x.shape[1] == 0:
        raise ValueError("x needs at least one position")
    if entering() and (torch.isnan(log_a).any() or (log_a > 0).any()):
        raise ValueError("log_a must be <= 0 (decays in [0, 1]); got a maximum of "
                         f"{float(log_a.detach().max()):.4g}")
    if form not in DIAGONAL_FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms: {', '.join(DIAGONAL_FORMS)}")
    B, L, C = x.shape
    if initial_state is not None:
        check_state(initial_state, (B, C))
    out_dtype, dtype = x.dtype, compute_dtype(x.dtype)
    x, log_a = x.to(dtype), log_a.to(dtype)
    if initial_state is not None:  # fold the start into the first input
        first = x[:, :1] + log_a[:, :1].exp() * initial_state.to(dtype)[:, None]
        x = torch.cat([first, x[:, 1:]], dim=1)
    h = _loop(x, log_a) if form == "recurrent" else _scan(x, log_a)
    h = h.to(out_dtype)
    return (h, h[:, -1]) if return_state else h


def _loop(x, log_a):
    a = log_a.exp()
    h, out = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        h = a[:, t] * h + x[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def _scan(x, log_a):
    def combine(earlier, later):  # (a, h) then (a', h') is (a a', a' h + h')
        return earlier[0] * later[0], later[0] * earlier[1] + later[1]

    return associative_scan((log_a.exp(), x), combine, axis=1)[1]
