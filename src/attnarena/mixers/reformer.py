"""Reformer's LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.ops._checks import compute_dtype
from attnarena.registry import register_mixer

SELF_PENALTY = -1e5  # the paper lets a token attend to itself only when nothing else is there


@register_mixer(
    "reformer", family="sparse attention",
    paper="Kitaev et al. 2020, Reformer: The Efficient Transformer",
    complexity="O(L C D)", patterns=("self", "causal"), forms=("parallel",))
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
        super().__init__(dim, heads, causal)
        for name, value in (("buckets", buckets), ("rounds", rounds),
                            ("chunk_size", chunk_size)):
            check_int(value, name)
        if buckets > 1 and buckets % 2:
            raise ValueError(f"buckets must be 1 or even (rotations give +-xR), got {buckets}")
        self.buckets, self.rounds, self.chunk_size, self.seed = buckets, rounds, chunk_size, seed
        self.qk_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def hashes(self, x, round_index):
        """(B, H, L, D) -> (B, H, L) bucket ids for one hashing round."""
        if self.buckets == 1:
            return torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
        g = torch.Generator().manual_seed(self.seed * 7919 + round_index)
        rotation = torch.randn(x.shape[-1], self.buckets // 2, generator=g).to(x)
        rotated = x @ rotation
        return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)

    def _forward(self, x, context, mask):
        B, L, _ = x.shape
        H, D = self.heads, self.head_dim
        # Scores in float32 for half-precision inputs: the self penalty does not fit float16.
        wide = compute_dtype(x.dtype)
        qk = self.qk_proj(x).view(B, L, H, D).transpose(1, 2).to(wide)
        v = self.v_proj(x).view(B, L, H, D).transpose(1, 2).to(wide)
        keys = F.normalize(qk, dim=-1)
        keep = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask
        outs, lses = [], []
        for round_index in range(self.rounds):
            o, lse = self._round(qk, keys, v, keep, self.hashes(qk, round_index))
            outs.append(o)
            lses.append(lse)
        # a query that sees nothing in any round (a padded one) reads zeros
        weights = torch.softmax(torch.stack(lses), dim=0).nan_to_num()[..., None]
        o = (weights * torch.stack(outs)).sum(0)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, H * D).to(x.dtype))

    def _round(self, q, k, v, keep, buckets):
        B, H, L, D = q.shape
        C = min(self.chunk_size, L)
        pad = (-L) % C
        positions = torch.arange(L, device=q.device).expand(B, H, L)
        order = (buckets * L + positions).argsort(dim=-1)  # sort by bucket, then position
        if pad:  # padding goes last, in its own bucket, and is never attended to
            order = torch.cat([order, torch.full((B, H, pad), L, device=q.device)], dim=-1)
            q, k, v = (F.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
            buckets = F.pad(buckets, (0, 1), value=-1)
            keep = F.pad(keep, (0, 1), value=False)
        n = (L + pad) // C
        index = order[..., None].expand(-1, -1, -1, D)
        sq, sk, sv = (t.gather(2, index).view(B, H, n, C, D) for t in (q, k, v))
        sb = buckets.gather(2, order).view(B, H, n, C)
        sp = order.view(B, H, n, C)
        sk_keep = keep[:, None].expand(B, H, -1).gather(2, order).view(B, H, n, C)
        if n > 1:  # keys: own chunk and the previous one
            def look_back(t):
                return torch.cat([t, t.roll(1, dims=2)], dim=3)
            kk, vv, kb, kp, kkeep = map(look_back, (sk, sv, sb, sp, sk_keep))
        else:
            kk, vv, kb, kp, kkeep = sk, sv, sb, sp, sk_keep
        scores = (sq @ kk.transpose(-1, -2)) / math.sqrt(D)  # (B, H, n, C, C or 2C)
        allowed = (sb[..., :, None] == kb[..., None, :]) & kkeep[..., None, :]
        if self.causal:
            allowed = allowed & (kp[..., None, :] <= sp[..., :, None])
        scores = scores.masked_fill(~allowed, float("-inf"))
        scores = torch.where(kp[..., None, :] == sp[..., :, None],
                             torch.where(allowed, torch.full_like(scores, SELF_PENALTY), scores),
                             scores)
        lse = torch.logsumexp(scores, dim=-1)
        o = torch.softmax(scores, dim=-1).nan_to_num() @ vv  # (B, H, n, C, D)
        # undo the sort
        result = q.new_zeros(B, H, L + (1 if pad else 0), D)
        result.scatter_(2, index, o.view(B, H, n * C, D))
        result_lse = q.new_zeros(B, H, L + (1 if pad else 0))
        result_lse.scatter_(2, order, lse.view(B, H, n * C))
        return result[:, :, :L], result_lse[:, :, :L]
