"""Sparse Sinkhorn attention (Tay et al. 2020, "Sparse Sinkhorn Attention")."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "sinkhorn", family="sparse attention",
    export_caveat=("its sorting network's blocks are fixed at the traced length: ONNX Runtime "
                   "refuses the graph"),
    paper="Tay et al. 2020, Sparse Sinkhorn Attention",
    complexity="O(L B D + (L/B)^2 D)", patterns=("self",), forms=("parallel",),
    approximates_softmax=True,
    padding_caveat="the sorting network balances all blocks of the padded length (Sinkhorn "
                   "normalization over every block, padded ones included)")
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
        return ops.sinkhorn(logits.permute(0, 2, 1, 3) / self.temperature, self.sinkhorn_iters)

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        o = ops.sinkhorn_attention(q, k, v, self.sort_matrix(x, mask), block=self.block,
                                   mask=mask)
        return self.o_proj(self.merge_heads(o))
