"""Routing attention (Roy et al. 2021, "Efficient Content-Based Sparse Attention with
Routing Transformers"): queries and keys, L2-normalized, are assigned to their nearest of
k shared centroids, and a query attends only to the keys of its own cluster (causally by
position when asked). Each cluster's queries and keys are gathered into rows padded to the
largest cluster, so the cost is O(L m D) for clusters of at most m tokens (L^2 D / k when
balanced, as online k-means keeps them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnarena.ops._checks import check_key_mask, check_qkv


def assign(x, centroids):
    """The nearest centroid of each normalized token: (B, H, L) ids, for x (B, H, L, D)
    and centroids (H, k, D)."""
    return (F.normalize(x, dim=-1) @ centroids.to(x.dtype).transpose(-1, -2)).argmax(-1)


def _members(ids, keep, k):
    """Rows (B, H, k, m) of token positions per cluster, in order, padded with L (a dummy
    position), and the largest cluster size m. Padded tokens join no cluster."""
    B, H, L = ids.shape
    ids = ids.masked_fill(~keep[:, None], k)  # padding goes to an extra cluster k
    order = torch.argsort(ids * L + torch.arange(L, device=ids.device), dim=-1)
    counts = F.one_hot(ids, k + 1).sum(2)[..., :k]  # (B, H, k)
    m = max(int(counts.max()), 1)
    starts = counts.cumsum(-1) - counts
    slot = torch.arange(m, device=ids.device)
    where = (starts[..., None] + slot).clamp_max(L - 1)  # (B, H, k, m) into the order
    rows = torch.gather(order, 2, where.flatten(2)).view(B, H, k, m)
    return rows.masked_fill(slot >= counts[..., None], L), m


def routing_attention(q, k, v, *, centroids, causal, mask=None):
    """Attention within content-based clusters.

    Args:
        q, k: (B, H, L, D); v: (B, H, L, Dv).
        centroids: (H, k, D) cluster centres per head.
        causal: a query sees only keys at or before its position.
        mask: (B, L) bool key mask, True = real token.

    Returns:
        (B, H, L, Dv) in the dtype of q; a query whose cluster holds no key it may see gets
        zeros.
    """
    check_qkv(q, k, v, same_length=True)
    check_key_mask(mask, q, k)
    B, H, L, D = q.shape
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 3 \
            or centroids.shape[0] != H or centroids.shape[2] != D:
        raise ValueError(f"centroids must have shape (heads, clusters, head_dim) = ({H}, k, "
                         f"{D}), got {tuple(getattr(centroids, 'shape', ()))}")
    n = centroids.shape[1]
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask
    every = torch.ones_like(keep)
    q_rows, _ = _members(assign(q, centroids), every, n)  # every query gets an output
    k_rows, _ = _members(assign(k, centroids), keep, n)

    def gather(x, rows):  # the dummy position L reads a row of zeros
        padded = F.pad(x, (0, 0, 0, 1))
        picked = torch.gather(padded, 2, rows.flatten(2)[..., None].expand(-1, -1, -1,
                                                                            x.shape[-1]))
        return picked.view(*rows.shape, x.shape[-1])

    qs, ks, vs = gather(q, q_rows), gather(k, k_rows), gather(v, k_rows)
    allowed = (k_rows < L)[..., None, :]
    if causal:
        allowed = allowed & (k_rows[..., None, :] <= q_rows[..., :, None])
    scores = (qs @ ks.transpose(-1, -2) / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
    out = torch.nan_to_num(scores.softmax(-1)) @ vs  # (B, H, k, mq, Dv)
    result = q.new_zeros(B, H, L + 1, v.shape[-1])
    result = result.scatter(2, q_rows.flatten(2)[..., None].expand(-1, -1, -1, v.shape[-1]),
                            out.flatten(2, 3))
    return result[:, :, :L]
