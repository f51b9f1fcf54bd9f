"""Shared plumbing of attention-style mixers: q, k, v and output projections, head split."""
from __future__ import annotations

from torch import nn

from attnarena import ops
from attnarena.mixers.base import Mixer


def split_heads(x, heads):
    """(B, L, H * D) -> (B, H, L, D)"""
    B, L, _ = x.shape
    return x.view(B, L, heads, -1).transpose(1, 2)


def merge_heads(x):
    """(B, H, L, D) -> (B, L, H * D)"""
    B, H, L, D = x.shape
    return x.transpose(1, 2).reshape(B, L, H * D)


class QKVMixer(Mixer):
    """A mixer with query/key/value/output projections; keys and values come from the
    context in cross attention and from x otherwise."""

    pretrained_options = {}

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, *, bias: bool = True,
                 form: str | None = None, chunk_size: int | None = None):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)

    def split_heads(self, x):
        """(B, L, dim) -> (B, H, L, D)"""
        return split_heads(x, self.heads)

    def merge_heads(self, x):
        """(B, H, L, D) -> (B, L, dim)"""
        return merge_heads(x)

    def softmax_counterpart(self, x, context=None):
        """Exact softmax attention through this mixer's own projections: what a mechanism
        that approximates softmax attention is measured against (speed sweeps)."""
        q, k, v = self.project(x, context)
        causal = self.causal and context is None
        return self.o_proj(self.merge_heads(ops.softmax_attention(q, k, v, causal=causal)))

    def project(self, x, context=None):
        """q from x, k and v from context (or x): each (B, H, *, D)."""
        source = x if context is None else context
        return (self.split_heads(self.q_proj(x)), self.split_heads(self.k_proj(source)),
                self.split_heads(self.v_proj(source)))
