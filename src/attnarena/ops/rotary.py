"""Rotary position embedding (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary
Position Embedding"): rotate pairs of channels by position-dependent angles so that q.k
depends on the distance between positions."""
from __future__ import annotations

import torch


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate x: (B, H, L, D) by positions: (L,) integer positions. D must be even."""
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {D}")
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (L, D/2)
    cos = angles.cos().to(x.dtype).repeat_interleave(2, dim=-1)
    sin = angles.sin().to(x.dtype).repeat_interleave(2, dim=-1)
    pairs = x.unflatten(-1, (D // 2, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + rotated * sin
