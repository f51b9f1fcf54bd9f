"""Softmax pooling over every prefix: o_t = sum_{s <= t} softmax_s(a_s) v_s, the
many-to-many recurrence of Aaren (Feng et al. 2024, "Attention as an RNN") and the causal
form of poolings by one score per token (MobileViT-v2's separable attention, Latte's
latent attention).

The state of a prefix is (m, u, w): the largest score, sum exp(a_s - m) and
sum exp(a_s - m) v_s; two adjacent spans combine associatively,

    (m1, u1, w1) + (m2, u2, w2) = (m, u1 e^(m1 - m) + u2 e^(m2 - m), w1 e^(m1 - m) + ...),
    m = max(m1, m2),

so the parallel form is a log-depth scan (Hillis and Steele 1986) and the recurrent form
the loop; o_t = w_t / u_t. ``softmax_pool`` is the noncausal case: one pooled vector.
"""
from __future__ import annotations

import torch

from attnarena._validate import all_finite, entering
from attnarena.ops.scan import associative_scan

PREFIX_FORMS = ("parallel", "recurrent")


def _check(scores, values, mask):
    if not isinstance(scores, torch.Tensor) or not isinstance(values, torch.Tensor) \
            or not scores.is_floating_point() or values.dim() != scores.dim() + 1 \
            or values.shape[:-1] != scores.shape:
        raise ValueError("scores must be a float tensor (..., L) and values (..., L, D) with "
                         f"the same leading shape, got {tuple(getattr(scores, 'shape', ()))} "
                         f"and {tuple(getattr(values, 'shape', ()))}")
    if scores.shape[-1] == 0:
        raise ValueError("scores need at least one position")
    if entering() and not all_finite(scores):
        raise ValueError("scores must be finite")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                             or mask.shape != scores.shape[:1] + scores.shape[-1:]):
        raise ValueError(f"mask must be a bool tensor (batch, L) = "
                         f"{tuple(scores.shape[:1] + scores.shape[-1:])}")


def _masked(scores, mask):
    """Padding gets weight 0: a score far below any real one (not -inf, which has no
    finite difference to a running maximum)."""
    if mask is None:
        return scores
    shape = (mask.shape[0],) + (1,) * (scores.dim() - 2) + (mask.shape[-1],)
    return scores.masked_fill(~mask.view(shape), torch.finfo(scores.dtype).min / 4)


def softmax_pool(scores, values, *, mask=None):
    """sum_s softmax_s(a_s) v_s over the whole sequence: scores (..., L), values (..., L, D)
    -> (..., D). ``mask`` (B, L) bool leaves padding out."""
    _check(scores, values, mask)
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    weights = torch.softmax(_masked(scores.to(dtype), mask), dim=-1).to(values.dtype)
    return (weights[..., None] * values).sum(-2)


def prefix_attention(scores, values, *, form="parallel", initial_state=None,
                     return_state=False):
    """o_t = sum_{s <= t} softmax(a_s over s <= t) v_s.

    Args:
        scores: (..., L) float; values: (..., L, D).
        form: "parallel" (log-depth scan) or "recurrent" (loop).
        initial_state: (m (...), u (...), w (..., D)) from a previous call, or None.
        return_state: also return the state after the last position.

    Returns:
        o (..., L, D) in the dtype of values, or (o, (m, u, w)).
    """
    _check(scores, values, None)
    if form not in PREFIX_FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms: {', '.join(PREFIX_FORMS)}")
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    a, v = scores.to(dtype), values.to(dtype)
    m, u, w = a, torch.ones_like(a), v
    if initial_state is not None:  # fold the earlier prefix into the first position
        m0, u0, w0 = (s.to(dtype) for s in initial_state)
        first = _combine((m0, u0, w0), (m[..., :1], u[..., :1], w[..., :1, :]), squeeze=True)
        m = torch.cat([first[0], m[..., 1:]], -1)
        u = torch.cat([first[1], u[..., 1:]], -1)
        w = torch.cat([first[2], w[..., 1:, :]], -2)
    if form == "recurrent":
        m, u, w = _loop(m, u, w)
    else:
        m, u, w = _scan(m, u, w)
    o = (w / u[..., None]).to(values.dtype)
    if return_state:
        return o, (m[..., -1], u[..., -1], w[..., -1, :])
    return o


def _combine(left, right, squeeze=False):
    """(m1, u1, w1) then (m2, u2, w2); with ``squeeze`` the left state has no L axis."""
    m1, u1, w1 = left
    m2, u2, w2 = right
    if squeeze:
        m1, u1, w1 = m1[..., None], u1[..., None], w1[..., None, :]
    m = torch.maximum(m1, m2)
    e1, e2 = (m1 - m).exp(), (m2 - m).exp()
    return m, u1 * e1 + u2 * e2, w1 * e1[..., None] + w2 * e2[..., None]


def _loop(m, u, w):
    state = (m[..., 0], u[..., 0], w[..., 0, :])
    ms, us, ws = [state[0]], [state[1]], [state[2]]
    for t in range(1, m.shape[-1]):
        step = (m[..., t:t + 1], u[..., t:t + 1], w[..., t:t + 1, :])
        merged = _combine(state, step, squeeze=True)
        state = (merged[0][..., 0], merged[1][..., 0], merged[2][..., 0, :])
        ms.append(state[0])
        us.append(state[1])
        ws.append(state[2])
    return torch.stack(ms, -1), torch.stack(us, -1), torch.stack(ws, -2)


def _scan(m, u, w):
    return associative_scan((m, u, w), _combine, axis=m.dim() - 1)


LATENT_SPAN = 60.0  # exp(-60) ~ 1e-26: every key feature stays a normal float32


def latent_attention(p_latent, scores, values, *, causal, mask=None, form="chunk",
                     chunk_size=64, initial_state=None, return_state=False):
    """Latte's latent attention (Dolga et al. 2024): y_t = sum_l p(l | t) sum_s p(s | l) v_s
    with p(s | l) = softmax over s (s <= t when causal) of ``scores``.

    The chunk form is causal linear attention with key features exp(k_s[l] - c_l) and
    query features p(l | t) / sum_{s <= t} exp(k_s[l] - c_l), c_l the latent's largest
    score; a latent whose scores span more than ``LATENT_SPAN`` falls back to the prefix
    scan, which is exact for any scores. "recurrent" is the prefix recurrence; a state
    (``initial_state`` / ``return_state``) continues a causal sequence.

    Args:
        p_latent: (B, H, L, M) p(l | t), each row summing to 1.
        scores: (B, H, M, L) each latent's score of each token (padding already low).
        values: (B, H, L, D).
        mask: (B, L) bool of real tokens (noncausal pooling), or None.

    Returns:
        (B, H, L, D) in the dtype of values, or (that, state) with ``return_state``.
    """
    if not causal:
        pooled = softmax_pool(scores, values[:, :, None].expand(-1, -1, scores.shape[2], -1, -1),
                              mask=mask)  # (B, H, M, D)
        return p_latent @ pooled.to(values.dtype)
    if form == "recurrent" or return_state or initial_state is not None \
            or _span(scores, mask) > LATENT_SPAN:
        expanded = values[:, :, None].expand(-1, -1, scores.shape[2], -1, -1)
        pooled, prefix = prefix_attention(scores, expanded, form="recurrent"
                                          if form == "recurrent" else "parallel",
                                          initial_state=initial_state, return_state=True)
        y = torch.einsum("bhlm,bhmld->bhld", p_latent, pooled.to(values.dtype))
        return (y, prefix) if return_state else y
    from attnarena.ops.linear import linear_attention

    top = scores.amax(-1, keepdim=True)
    features = (scores - top).exp()  # (B, H, M, L)
    normalizer = features.cumsum(-1)
    query = p_latent * (1.0 / normalizer).transpose(-1, -2)  # (B, H, L, M)
    return linear_attention(query, features.transpose(-1, -2), values, causal=True,
                            normalize=False, form="chunk", chunk_size=chunk_size)


def _span(scores, mask):
    real = scores if mask is None else scores.masked_fill(~mask[:, None, None], 0.0)
    return float((real.amax(-1) - real.amin(-1)).max().detach())
