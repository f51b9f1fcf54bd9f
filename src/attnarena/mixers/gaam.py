"""Gaussian Adaptive Attention (Ioannides et al. 2024, "Gaussian Adaptive Attention is All
You Need: Robust Contextual Representations Across Multiple Modalities")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.registry import register_mixer


@register_mixer(
    "gaam", family="gaussian attention",
    step_export_caveat=("its step reads the token's position from a Python int in its state, "
                        "which the trace fixes (the logits differ from the second token on)"),
    paper="Ioannides et al. 2024, Gaussian Adaptive Attention is All You Need: Robust "
          "Contextual Representations Across Multiple Modalities",
    complexity="O(L D)", patterns=("self", "causal"), forms=("parallel", "recurrent"),
    form_notes={"recurrent": "running statistics"})
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

    def _forward(self, x, context, mask):
        y = ops.gaussian_adaptive(self.v_proj(x), self.mean_offset, self.scales(),
                                  heads=self.heads, eps=self.eps, causal=self.causal, mask=mask)
        return self.o_proj(y)

    def _init_state(self, batch_size, device, dtype):
        return ops.gaussian.gaussian_state(batch_size, self.dim, device, dtype)

    def _step(self, x_t, state):
        y, state = ops.gaussian_adaptive(self.v_proj(x_t)[:, None], self.mean_offset,
                                         self.scales(), heads=self.heads, eps=self.eps,
                                         causal=True, form="recurrent", initial_state=state,
                                         return_state=True)
        return self.o_proj(y[:, 0]), state
