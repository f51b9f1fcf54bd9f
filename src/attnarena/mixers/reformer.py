"""Reformer's LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer")."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.registry import register_mixer

@register_mixer(
    "reformer", family="sparse attention",
    export_caveat=("its hashing draws from a seeded torch.Generator, which a traced graph cannot "
                   "hold"),
    paper="Kitaev et al. 2020, Reformer: The Efficient Transformer",
    complexity="O(L C D)", patterns=("self", "causal"), forms=("parallel",),
    approximates_softmax=True)
class LSHAttention(Mixer):
    """LSH attention (Kitaev et al. 2020): shared query/key projection (keys are the unit-
    normalized queries), angular LSH by random rotations h(x) = argmax([xR; -xR]) into
    ``buckets`` buckets, tokens sorted by (bucket, position) and cut into chunks of
    ``chunk_size``; each chunk attends to itself and the previous chunk, within the same
    bucket, never to itself unless nothing else is visible. ``rounds`` independent hashes
    are combined by their softmax normalizers. Rotations are redrawn from ``seed`` per
    round, so the layer is deterministic.

    Options: buckets, rounds, chunk_size, seed.
    """

    def __init__(self, dim, heads=1, causal=False, *, buckets=8, rounds=1, chunk_size=64,
                 seed=0):
        super().__init__(dim, heads, causal, chunk_size=chunk_size)
        for name, value in (("buckets", buckets), ("rounds", rounds)):
            check_int(value, name)
        if buckets > 1 and buckets % 2:
            raise ValueError(f"buckets must be 1 or even (rotations give +-xR), got {buckets}")
        self.buckets, self.rounds, self.seed = buckets, rounds, seed
        self.qk_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def hashes(self, x, round_index):
        """(B, H, L, D) -> (B, H, L) bucket ids for one hashing round."""
        return ops.lsh.lsh_buckets(x, self.buckets, self.seed, round_index)

    def softmax_counterpart(self, x):
        """Exact shared-QK softmax attention (keys the unit-normalized queries) through this
        mixer's projections: what LSH attention approximates."""
        B, L, _ = x.shape
        H, D = self.heads, self.head_dim
        qk = self.qk_proj(x).view(B, L, H, D).transpose(1, 2)
        v = self.v_proj(x).view(B, L, H, D).transpose(1, 2)
        o = ops.softmax_attention(qk, F.normalize(qk, dim=-1), v, causal=self.causal)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, H * D))

    def _forward(self, x, context, mask):
        B, L, _ = x.shape
        H, D = self.heads, self.head_dim
        qk = self.qk_proj(x).view(B, L, H, D).transpose(1, 2)
        v = self.v_proj(x).view(B, L, H, D).transpose(1, 2)
        o = ops.lsh_attention(qk, v, buckets=self.buckets, rounds=self.rounds,
                              chunk_size=self.chunk_size, seed=self.seed, causal=self.causal,
                              mask=mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, H * D).to(x.dtype))
