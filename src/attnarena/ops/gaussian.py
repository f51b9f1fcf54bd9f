"""Gaussian adaptive attention (Ioannides et al. 2024, "Gaussian Adaptive Attention is All
You Need: Robust Contextual Representations Across Multiple Modalities")."""
from __future__ import annotations

import torch

from attnarena.ops._checks import check_form, compute_dtype


def gaussian_gate(x, mean, var, offsets, scales, *, heads, eps):
    """x weighted by its Gaussian densities: x * prod_g exp(-(x - (mu + delta_g))^2 /
    (2 xi_g (sigma^2 + eps))).

    x, mean, var: (..., heads * head_dim); offsets (delta), scales (xi): (gaussians, heads).
    """
    shape = x.shape
    split = (*shape[:-1], heads, shape[-1] // heads)
    x, mean, var = x.reshape(split), mean.reshape(split), var.reshape(split)
    log_density = x.new_zeros(split)
    for g in range(offsets.shape[0]):
        offset = offsets[g].to(x.dtype)[:, None]
        xi = scales[g].to(x.dtype)[:, None]
        log_density = log_density - (x - (mean + offset)) ** 2 / (2 * xi * (var + eps))
    return (x * log_density.exp()).reshape(shape)


def _statistics(x, keep, causal):
    """Mean and variance over (real) tokens of (B, L, C), over all or the prefix."""
    wide = compute_dtype(x.dtype)
    w = keep.to(wide)[..., None]
    values = x.to(wide) * w
    if causal:
        count = w.cumsum(1).clamp_min(1.0)
        total, squares = values.cumsum(1), (values * x.to(wide)).cumsum(1)
    else:
        count = w.sum(1, keepdim=True).clamp_min(1.0)
        total = values.sum(1, keepdim=True)
        squares = (values * x.to(wide)).sum(1, keepdim=True)
    mean = total / count
    var = (squares / count - mean ** 2).clamp_min(0.0)
    return mean.to(x.dtype).expand_as(x), var.to(x.dtype).expand_as(x)


def gaussian_state(batch_size, channels, device=None, dtype=torch.float32):
    """Empty running statistics for the recurrent form: token count, sum, sum of squares."""
    zeros = torch.zeros(batch_size, channels, device=device, dtype=compute_dtype(dtype))
    return {"count": 0, "sum": zeros, "squares": zeros.clone()}


def gaussian_adaptive(x, offsets, scales, *, heads, eps=1e-5, causal=False, mask=None,
                      form="parallel", initial_state=None, return_state=False):
    """Gaussian adaptive attention over (B, L, C) features: each feature is gated by
    ``gaussian_gate`` with mu and sigma^2 its mean and variance over the sequence's real
    tokens (over the prefix when causal).

    Forms: ``parallel`` (sums over the sequence, prefix sums when causal) and ``recurrent``
    (causal only: running sums, token by token, from ``initial_state``). Padded tokens
    (``mask`` False) are left out of the statistics.

    Returns:
        (B, L, C), and the running statistics with ``return_state`` (recurrent form).
    """
    check_form(form)
    if form == "parallel":
        if initial_state is not None or return_state:
            raise ValueError("the parallel form starts from no state and returns none; use "
                             "form='recurrent' for initial_state / return_state")
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None \
            else mask
        mean, var = _statistics(x, keep, causal)
        return gaussian_gate(x, mean, var, offsets, scales, heads=heads, eps=eps)
    if form != "recurrent" or not causal or mask is not None:
        raise ValueError("gaussian_adaptive's recurrent form is causal, without a mask; "
                         f"got form={form!r}, causal={causal}, mask given: {mask is not None}")
    state = gaussian_state(x.shape[0], x.shape[2], x.device, x.dtype) \
        if initial_state is None else initial_state
    outputs = []
    for t in range(x.shape[1]):
        v = x[:, t]
        wide = v.to(state["sum"].dtype)
        count = state["count"] + 1
        total, squares = state["sum"] + wide, state["squares"] + wide * wide
        mean = total / count
        var = (squares / count - mean ** 2).clamp_min(0.0)
        outputs.append(gaussian_gate(v[:, None], mean.to(v.dtype)[:, None],
                                     var.to(v.dtype)[:, None], offsets, scales, heads=heads,
                                     eps=eps)[:, 0])
        state = {"count": count, "sum": total, "squares": squares}
    y = torch.stack(outputs, dim=1)
    return (y, state) if return_state else y
