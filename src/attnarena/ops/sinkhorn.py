"""Sparse Sinkhorn attention (Tay et al. 2020, "Sparse Sinkhorn Attention")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnarena.ops._checks import check_key_mask, check_qkv
from attnarena.ops.softmax import masked_softmax


def sinkhorn(log_alpha, iterations):
    """Sinkhorn normalization in log space: alternately normalize rows and columns of
    exp(log_alpha), approaching a doubly stochastic matrix. (..., n, n) -> (..., n, n)."""
    for _ in range(iterations):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()


def sinkhorn_attention(q, k, v, sort_matrix, *, block, mask=None):
    """Block-sorted attention: the sequence is cut into n blocks of ``block`` tokens and each
    query block attends to its own block's keys and to the keys the soft permutation
    ``sort_matrix`` sorts into its place (P applied to key and value blocks).

    Args:
        q, k, v: (B, H, L, D).
        sort_matrix: (B, H, n, n) soft block permutation, rows = target blocks,
            n = ceil(L / block).
        mask: optional (B, L) bool key mask.

    Returns:
        (B, H, L, D).
    """
    check_qkv(q, k, v, same_length=True)
    check_key_mask(mask, q, k)
    B, H, L, D = q.shape
    b = block
    n = -(-L // b)
    if tuple(sort_matrix.shape) != (B, H, n, n):
        raise ValueError(f"sort_matrix must have shape (B, H, n, n) = {(B, H, n, n)} for "
                         f"length {L} and block {b}, got {tuple(sort_matrix.shape)}")
    pad = n * b - L
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask
    keep = F.pad(keep, (0, pad), value=False)
    qb, kb, vb = (F.pad(t, (0, 0, 0, pad)).view(B, H, n, b, D) for t in (q, k, v))
    P = sort_matrix
    sorted_k = torch.einsum("bhij,bhjtd->bhitd", P, kb)
    sorted_v = torch.einsum("bhij,bhjtd->bhitd", P, vb)
    sorted_keep = torch.einsum("bhij,bjt->bhit", P, keep.view(B, n, b).to(P.dtype)) > 0
    keys = torch.cat([kb, sorted_k], dim=3)  # (B, H, n, 2b, D)
    values = torch.cat([vb, sorted_v], dim=3)
    allowed = torch.cat([keep.view(B, 1, n, b).expand(B, H, n, b), sorted_keep], dim=3)
    scores = (qb @ keys.transpose(-1, -2)) / math.sqrt(D)  # (B, H, n, b, 2b)
    o = masked_softmax(scores, allowed[:, :, :, None, :]) @ values
    return o.reshape(B, H, n * b, D)[:, :, :L]
