"""Mixture-of-Head attention (Jin et al. 2024, "MoH: Multi-Head Attention as
Mixture-of-Head Attention")."""
from __future__ import annotations

from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.softmax import DotProductAttention
from attnarena.registry import PATTERNS, register_mixer


@register_mixer(
    "moh", family="softmax attention",
    paper="Jin et al. 2024, MoH: Multi-Head Attention as Mixture-of-Head Attention",
    complexity="O(L^2 D)", patterns=PATTERNS, forms=("parallel", "recurrent"),
    form_notes={"recurrent": "KV cache"})
class MixtureOfHeads(DotProductAttention):
    """MoH (Jin et al. 2024): each token routes to the top-k of the routed heads, plus a
    few always-active shared heads; head outputs are summed with routing weights instead
    of concatenated with equal weight. Shared heads weigh in with one learned score, the
    routed heads with a softmax over the chosen top-k, balanced by a learned pair of
    coefficients as in the paper.

    Options: shared_heads, top_k, plus the softmax options (attn_dropout, rope, alibi).
    """

    def __init__(self, dim, heads=1, causal=False, *, shared_heads=1, top_k=1,
                 attn_dropout=0.0, rope=False, rope_base=10000.0, alibi=False):
        super().__init__(dim, heads, causal, attn_dropout=attn_dropout, rope=rope,
                         rope_base=rope_base, alibi=alibi)
        check_int(shared_heads, "shared_heads", minimum=0)
        check_int(top_k, "top_k")
        routed = heads - shared_heads
        if not 0 <= shared_heads <= heads:
            raise ValueError(f"shared_heads must be in [0, heads={heads}], got {shared_heads}")
        if routed and not 1 <= top_k <= routed:
            raise ValueError(f"top_k must be in [1, {routed}] routed heads, got {top_k}")
        self.shared_heads, self.top_k = shared_heads, top_k
        self.router = nn.Linear(dim, routed, bias=False) if routed else None
        self.shared_router = nn.Linear(dim, shared_heads, bias=False) if shared_heads else None
        self.balance = nn.Linear(dim, 2, bias=False)

    def head_weights(self, x):
        """(B, L, dim) -> (B, L, heads) routing weights; unrouted heads get 0."""
        return ops.head_routing_weights(
            self.balance(x),
            None if self.shared_router is None else self.shared_router(x),
            None if self.router is None else self.router(x), top_k=self.top_k)

    def _output(self, o, x):
        """Head outputs (B, H, L, D) weighted by their routing weights, then projected."""
        weights = self.head_weights(x).transpose(1, 2)[..., None]  # (B, H, L, 1)
        return self.o_proj(self.merge_heads(o * weights))
