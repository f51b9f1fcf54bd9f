"""XCiT's cross-covariance attention (El-Nouby et al. 2021)."""
from __future__ import annotations

import torch
from torch import nn

from attnarena import ops
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "xcit", family="channel attention",
    paper="El-Nouby et al. 2021, XCiT: Cross-Covariance Image Transformers",
    complexity="O(L D^2 / H)", patterns=("self",), forms=("parallel",))
class CrossCovarianceAttention(QKVMixer):
    """XCA (El-Nouby et al. 2021): per head, a (D, D) attention map between channels from
    L2-normalized queries and keys (each channel over the sequence) with a learned temperature
    per head (set to 1 at the start, as the paper's); each token's values are mixed by it.
    Noncausal only: the map is a statistic of the whole sequence.

    Options: bias.
    """

    def __init__(self, dim, heads=1, causal=False, *, bias=True):
        super().__init__(dim, heads, causal, bias=bias)
        self.temperature = nn.Parameter(torch.ones(heads))

    def _forward(self, x, context, mask):
        q, k, v = (self.split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        o = ops.cross_covariance_attention(q, k, v, temperature=self.temperature, mask=mask)
        return self.o_proj(self.merge_heads(o))
