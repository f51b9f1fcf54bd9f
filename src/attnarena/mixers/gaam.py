"""Gaussian Adaptive Attention (Ioannides et al. 2024, "Gaussian Adaptive Attention is All
You Need: Robust Contextual Representations Across Multiple Modalities")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.ops._checks import compute_dtype
from attnarena.registry import register_mixer


@register_mixer(
    "gaam", family="gaussian attention",
    paper="Ioannides et al. 2024, Gaussian Adaptive Attention is All You Need: Robust "
          "Contextual Representations Across Multiple Modalities",
    complexity="O(L D)", patterns=("self", "causal"), forms=("parallel", "recurrent"))
class GaussianAdaptiveAttention(Mixer):
    """Multi-head Gaussian adaptive attention (Ioannides et al. 2024): each feature is
    weighted by a Gaussian density of where it lies in its distribution over the sequence,
    y = x * prod_g exp(-(x - (mu + delta_g))^2 / (2 xi_g (sigma^2 + eps))), with mu and
    sigma^2 the mean and variance over tokens, and per head g = 1..gaussians a learned mean
    offset delta_g and variance scale xi_g. Causal use takes mu and sigma^2 over the prefix
    (running sums, so decoding costs O(1) per token); padded tokens are left out of them.
    The projections around the gate follow the block of the paper (value in, output out).

    Options: gaussians (per head), eps.
    """

    def __init__(self, dim, heads=1, causal=False, *, gaussians=1, eps=1e-5):
        super().__init__(dim, heads, causal)
        check_int(gaussians, "gaussians")
        self.gaussians, self.eps = gaussians, eps
        self.mean_offset = nn.Parameter(torch.zeros(gaussians, heads))
        self.raw_scale = nn.Parameter(torch.zeros(gaussians, heads))  # softplus -> xi > 0
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def scales(self):
        return F.softplus(self.raw_scale) + 1e-3

    def _gate(self, x, mean, var):
        """x, mean, var: (B, L, dim) -> x weighted by the Gaussian densities."""
        shape = x.shape
        heads = (*shape[:-1], self.heads, self.head_dim)
        x, mean, var = x.reshape(heads), mean.reshape(heads), var.reshape(heads)
        log_density = x.new_zeros(heads)
        for g in range(self.gaussians):
            offset = self.mean_offset[g].to(x.dtype)[:, None]
            xi = self.scales()[g].to(x.dtype)[:, None]
            log_density = log_density - (x - (mean + offset)) ** 2 / (2 * xi * (var + self.eps))
        return (x * log_density.exp()).reshape(shape)

    def _statistics(self, v, keep):
        """Mean and variance over (real) tokens, over all or over the prefix when causal."""
        wide = compute_dtype(v.dtype)
        w = keep.to(wide)[..., None]
        values = v.to(wide) * w
        if self.causal:
            count = w.cumsum(1).clamp_min(1.0)
            total, squares = values.cumsum(1), (values * v.to(wide)).cumsum(1)
        else:
            count = w.sum(1, keepdim=True).clamp_min(1.0)
            total = values.sum(1, keepdim=True)
            squares = (values * v.to(wide)).sum(1, keepdim=True)
        mean = total / count
        var = (squares / count - mean ** 2).clamp_min(0.0)
        return mean.to(v.dtype).expand_as(v), var.to(v.dtype).expand_as(v)

    def _forward(self, x, context, mask):
        v = self.v_proj(x)
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask
        mean, var = self._statistics(v, keep)
        return self.o_proj(self._gate(v, mean, var))

    def _init_state(self, batch_size, device, dtype):
        wide = compute_dtype(dtype)
        zeros = torch.zeros(batch_size, self.dim, device=device, dtype=wide)
        return {"count": 0, "sum": zeros, "squares": zeros.clone()}

    def _step(self, x_t, state):
        v = self.v_proj(x_t)  # (B, dim)
        wide = v.to(state["sum"].dtype)
        count = state["count"] + 1
        total, squares = state["sum"] + wide, state["squares"] + wide * wide
        mean = total / count
        var = (squares / count - mean ** 2).clamp_min(0.0)
        y = self._gate(v[:, None], mean.to(v.dtype)[:, None], var.to(v.dtype)[:, None])[:, 0]
        return self.o_proj(y), {"count": count, "sum": total, "squares": squares}
