"""SOFT: softmax-free attention with a Gaussian kernel (Lu et al. 2021)."""
from __future__ import annotations

from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.mixers.qkv import merge_heads, split_heads
from attnarena.registry import register_mixer


@register_mixer(
    "soft", family="kernel attention",
    export_caveat=("a graph traced at one length does not reproduce the model at three times it "
                   "(largest error 3% of the output's scale)"),
    paper="Lu et al. 2021, SOFT: Softmax-free Transformer with Linear Complexity",
    complexity="O(L m D + m^3)", patterns=("self",), forms=("parallel",),
    form_notes={"parallel": "Nystrom, Newton inverse"})
class SoftAttention(Mixer):
    """SOFT (Lu et al. 2021): one projection gives queries and keys; S_ij = exp(-||q_i - q_j||^2
    / (2 sqrt(D))) weighs the values without normalization, through ``landmarks`` segment-mean
    landmarks and ``iterations`` Newton steps for the landmark kernel's inverse.

    Options: landmarks, iterations.
    """

    def __init__(self, dim, heads=1, causal=False, *, landmarks=64, iterations=20):
        super().__init__(dim, heads, causal)
        check_int(landmarks, "landmarks")
        check_int(iterations, "iterations", minimum=0)
        self.landmarks, self.iterations = landmarks, iterations
        self.qk_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(3))

    def _forward(self, x, context, mask):
        q, v = split_heads(self.qk_proj(x), self.heads), split_heads(self.v_proj(x), self.heads)
        o = ops.soft_attention(q, v, landmarks=self.landmarks, iterations=self.iterations,
                               mask=mask)
        return self.o_proj(merge_heads(o))
