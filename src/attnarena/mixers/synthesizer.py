"""Synthesizer (Tay et al. 2021, "Synthesizer: Rethinking Self-Attention for Transformer
Models"): attention weights that do not come from query-key dot products."""
from __future__ import annotations

import torch
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.registry import register_mixer


@register_mixer(
    "synthesizer", family="synthetic attention",
    paper="Tay et al. 2021, Synthesizer: Rethinking Self-Attention for Transformer Models",
    complexity="O(L^2 D)", patterns=("self", "causal"), forms=("parallel",))
class Synthesizer(Mixer):
    """Synthesizer (Tay et al. 2021). Dense: scores B_i = W2 relu(W1 x_i) over positions,
    per head; random: a learned (max_len, max_len) score matrix per head, independent of
    the input. Output softmax(B) V with V = x W_v; causal use masks future positions.

    Options: kind ("dense" or "random"), max_len.
    """

    def __init__(self, dim, heads=1, causal=False, *, kind="dense", max_len=512):
        super().__init__(dim, heads, causal)
        if kind not in ("dense", "random"):
            raise ValueError(f"kind must be 'dense' or 'random', got {kind!r}")
        check_int(max_len, "max_len")
        self.kind, self.max_len = kind, max_len
        if kind == "dense":
            self.scorer = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(),
                                        nn.Linear(dim, heads * max_len))
        else:
            self.scores = nn.Parameter(torch.randn(heads, max_len, max_len) * 0.02)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def _forward(self, x, context, mask):
        B, L, _ = x.shape
        if L > self.max_len:
            raise ValueError(f"synthesizer was built for max_len={self.max_len}, got length {L}")
        if self.kind == "dense":
            scores = self.scorer(x).view(B, L, self.heads, self.max_len)[..., :L]
            scores = scores.permute(0, 2, 1, 3)  # (B, H, L, L)
        else:
            scores = self.scores[None, :, :L, :L].expand(B, -1, -1, -1)
        v = self.v_proj(x).view(B, L, self.heads, -1).transpose(1, 2)
        o = ops.score_attention(scores, v, causal=self.causal, mask=mask)
        o = o.transpose(1, 2).reshape(B, L, -1)
        return self.o_proj(o)
