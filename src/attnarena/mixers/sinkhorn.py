"""Sparse Sinkhorn attention (Tay et al. 2020, "Sparse Sinkhorn Attention")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


def sinkhorn(log_alpha, iterations):
    """Sinkhorn normalization in log space: alternately normalize rows and columns of
    exp(log_alpha), approaching a doubly stochastic matrix. (..., n, n) -> (..., n, n)."""
    for _ in range(iterations):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()


@register_mixer(
    "sinkhorn", family="sparse attention",
    paper="Tay et al. 2020, Sparse Sinkhorn Attention",
    complexity="O(L B D + (L/B)^2 D)", patterns=("self",), forms=("parallel",))
class SinkhornAttention(QKVMixer):
    """Sparse Sinkhorn attention (Tay et al. 2020): the sequence is cut into blocks of
    ``block`` tokens; a sorting network scores block pairs from the blocks' summed
    embeddings, Sinkhorn normalization turns the scores into a soft permutation P, and
    each query block attends to its own block's keys and to the keys of the block that P
    sorts into its place (P applied to key and value blocks).

    Options: block, max_len (bounds the sorting network's output), sinkhorn_iters,
    temperature.
    """

    def __init__(self, dim, heads=1, causal=False, *, block=32, max_len=4096,
                 sinkhorn_iters=8, temperature=0.75):
        super().__init__(dim, heads, causal)
        check_int(block, "block")
        check_int(max_len, "max_len")
        check_int(sinkhorn_iters, "sinkhorn_iters")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.block, self.max_len = block, max_len
        self.sinkhorn_iters, self.temperature = sinkhorn_iters, temperature
        self.max_blocks = -(-max_len // block)
        self.sorter = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(),
                                    nn.Linear(dim, heads * self.max_blocks))

    def sort_matrix(self, x, mask=None):
        """(B, L, dim) -> (B, H, n, n) soft block permutation, rows = target blocks."""
        B, L, _ = x.shape
        n = -(-L // self.block)
        if n > self.max_blocks:
            raise ValueError(f"sinkhorn was built for max_len={self.max_len}, got length {L}")
        keep = x.new_ones(B, L) if mask is None else mask.to(x.dtype)
        summed = F.pad(x * keep[..., None], (0, 0, 0, n * self.block - L))
        summed = summed.view(B, n, self.block, -1).sum(2)  # (B, n, dim)
        logits = self.sorter(summed).view(B, n, self.heads, self.max_blocks)[..., :n]
        return sinkhorn(logits.permute(0, 2, 1, 3) / self.temperature, self.sinkhorn_iters)

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        B, H, L, D = q.shape
        b = self.block
        n = -(-L // b)
        pad = n * b - L
        keep = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask
        keep = F.pad(keep, (0, pad), value=False)
        qb, kb, vb = (F.pad(t, (0, 0, 0, pad)).view(B, H, n, b, D) for t in (q, k, v))
        P = self.sort_matrix(x, mask)  # (B, H, n, n)
        sorted_k = torch.einsum("bhij,bhjtd->bhitd", P, kb)
        sorted_v = torch.einsum("bhij,bhjtd->bhitd", P, vb)
        sorted_keep = torch.einsum("bhij,bjt->bhit", P, keep.view(B, n, b).to(P.dtype)) > 0
        keys = torch.cat([kb, sorted_k], dim=3)  # (B, H, n, 2b, D)
        values = torch.cat([vb, sorted_v], dim=3)
        allowed = torch.cat([keep.view(B, 1, n, b).expand(B, H, n, b), sorted_keep], dim=3)
        scores = (qb @ keys.transpose(-1, -2)) / math.sqrt(D)  # (B, H, n, b, 2b)
        scores = scores.masked_fill(~allowed[:, :, :, None, :], float("-inf"))
        o = torch.softmax(scores, dim=-1).nan_to_num() @ values
        o = o.reshape(B, H, n * b, D)[:, :, :L]
        return self.o_proj(self.merge_heads(o))
