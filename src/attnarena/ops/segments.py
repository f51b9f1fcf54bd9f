"""Landmarks as segment means (Nystromformer, SOFT, agent attention): segments laid over
each row's real tokens, so that a padded row has the landmarks of the same sequence alone."""
from __future__ import annotations

import torch


def segment_means(q, mask, landmarks):
    """The landmarks of each row: the means of ``landmarks`` segments of its real tokens
    in order, laid over the row's own length n as adaptive average pooling lays them over
    a whole sequence (segment i: ranks floor(i n / m) to ceil((i + 1) n / m), m = min(
    landmarks, n)), so a padded row has the landmarks of the same sequence alone.

    q: (B, H, L, D); mask: (B, L) bool, True = real token (None: every token is) ->
    (marks (B, H, landmarks, D), present (B, landmarks) bool: False for the segments a row
    shorter than ``landmarks`` lacks)."""
    B, _, L, _ = q.shape
    real = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask.bool()
    n = real.sum(1, keepdim=True)  # (B, 1)
    m = n.clamp(1, landmarks)
    rank = real.long().cumsum(1) - 1  # (B, L): a real token's place among its row's real tokens
    i = torch.arange(landmarks, device=q.device)
    start = (i * n) // m  # (B, M)
    end = ((i + 1) * n + m - 1) // m
    present = i < m
    inside = real[..., None] & (rank[..., None] >= start[:, None]) \
        & (rank[..., None] < end[:, None]) & present[:, None]  # (B, L, M)
    weights = inside.to(q.dtype)
    counts = weights.sum(1).clamp_min(1)  # (B, M)
    marks = torch.einsum("blm,bhld->bhmd", weights, q) / counts[:, None, :, None]
    return marks, present
