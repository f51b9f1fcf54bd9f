"""Fixed sparsity patterns over softmax attention: the Sparse Transformer (Child et al.
2019, "Generating Long Sequences with Sparse Transformers"), Longformer (Beltagy et al.
2020, "Longformer: The Long-Document Transformer") and BigBird (Zaheer et al. 2020, "Big
Bird: Transformers for Longer Sequences"). Each pattern is an (L, L) bool matrix, True
where query i may attend to key j; ``pattern_attention`` runs softmax attention under one.
"""
from __future__ import annotations

import torch

from attnarena.ops._checks import check_key_mask, check_qkv
from attnarena.ops.softmax import softmax_attention


def strided_pattern(L, block, device=None):
    """The strided Sparse Transformer pattern: the previous ``block`` positions and every
    ``block``-th one before them (mirrored, so noncausal use sees both sides)."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    return ((i - j).abs() < block) | ((i - j) % block == 0)


def fixed_pattern(L, block, summary, device=None):
    """The fixed Sparse Transformer pattern: positions in the same block of ``block``
    tokens, and the last ``summary`` positions of every block."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    return (i // block == j // block) | (j % block >= block - summary)


def longformer_pattern(L, window, global_tokens, device=None):
    """Longformer: a sliding window of ``window`` keys centred on each query, plus
    ``global_tokens`` leading positions that attend to and are attended by every position."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    g = global_tokens
    return ((i - j).abs() <= window // 2) | (i < g) | (j < g)


def bigbird_blocks(n, global_blocks, random_blocks, seed):
    """(n, n) bool over blocks: each block sees its own and the two neighbouring blocks,
    the ``global_blocks`` leading blocks (which see everything), and ``random_blocks``
    random blocks drawn from ``seed`` and n (fixed for a given length)."""
    bi = torch.arange(n)[:, None]
    bj = torch.arange(n)[None, :]
    allowed = ((bi - bj).abs() <= 1) | (bi < global_blocks) | (bj < global_blocks)
    generator = torch.Generator().manual_seed(seed * 100_003 + n)
    for row in range(n):
        picks = torch.randperm(n, generator=generator)[:random_blocks]
        allowed[row, picks] = True
    return allowed


def bigbird_pattern(L, block, global_blocks, random_blocks, seed, device=None):
    """BigBird's block pattern (``bigbird_blocks``) spread over tokens in blocks of
    ``block``."""
    n = -(-L // block)
    blocks = torch.arange(L) // block
    allowed = bigbird_blocks(n, global_blocks, random_blocks, seed)
    return allowed[blocks[:, None], blocks[None, :]].to(device)


def pattern_attention(q, k, v, pattern, *, causal=False, mask=None, alibi_slopes=None,
                      dropout=0.0):
    """Softmax attention restricted to ``pattern`` (L, L) bool (and to keys j <= i when
    causal, and to real keys under the (B, L) bool ``mask``). q, k, v: (B, H, L, D)."""
    check_qkv(q, k, v, same_length=True)
    check_key_mask(mask, q, k)
    L = q.shape[2]
    if tuple(pattern.shape) != (L, L) or pattern.dtype != torch.bool:
        raise ValueError(f"pattern must be an (L, L) = {(L, L)} bool tensor, got "
                         f"{tuple(pattern.shape)} {pattern.dtype}")
    allowed = pattern[None, None]  # (1, 1, L, L)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    return softmax_attention(q, k, v, mask=allowed, alibi_slopes=alibi_slopes, dropout=dropout)
