"""Log-linear attention (Guo et al. 2025, "Log-Linear Attention") over a linear-attention
core, in its two training forms."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena.ops._checks import check_qkv


def fenwick_levels(L, device=None):
    """(L, L) level of key s for query t: 0 for s == t, 1 + the highest bit where t and s
    differ for s < t (the Fenwick partition of the prefix into power-of-two segments),
    -1 above the diagonal."""
    t = torch.arange(L, device=device)[:, None]
    s = torch.arange(L, device=device)[None, :]
    diff = (t ^ s).clamp(min=1)
    level = torch.floor(torch.log2(diff.double())).long() + 1
    level = torch.where(s == t, torch.zeros_like(level), level)
    return torch.where(s > t, torch.full_like(level, -1), level)


def log_linear_attention(q, k, v, level_weights, *, form="chunk"):
    """Causal log-linear attention: o_t = sum_l lambda_t^(l) q_t^T S_t^(l), with S_t^(l) the
    sum of k_s v_s^T over the keys of level l of the Fenwick partition of t's prefix.

    Args:
        q, k, v: (B, H, L, D) (scale q beforehand; zero the keys of padded tokens).
        level_weights: (B, H, L, levels) lambda, levels > the highest level, i.e.
            L <= 2^(levels - 1).
        form: ``parallel`` (the masked quadratic form (Q K^T * M) V, M_ts =
            lambda_t^(level(t, s)): the reference) or ``chunk`` (level by level over aligned
            windows, O(L log L)).

    Returns:
        (B, H, L, D).
    """
    check_qkv(q, k, v, same_length=True)
    B, H, L, D = q.shape
    if level_weights.shape[:3] != (B, H, L) or level_weights.dim() != 4:
        raise ValueError(f"level_weights must have shape (B, H, L, levels) with (B, H, L) = "
                         f"{(B, H, L)}, got {tuple(level_weights.shape)}")
    if L > 2 ** (level_weights.shape[-1] - 1):
        raise ValueError(f"{level_weights.shape[-1]} levels support length "
                         f"<= {2 ** (level_weights.shape[-1] - 1)}, got {L}")
    if form == "parallel":
        return _parallel(q, k, v, level_weights)
    if form == "chunk":
        return _chunk(q, k, v, level_weights)
    raise ValueError(f"log_linear_attention has forms 'parallel' and 'chunk', got {form!r}")


def _parallel(q, k, v, lam):
    L = q.shape[2]
    levels = fenwick_levels(L, q.device)  # (L, L)
    weights = lam.gather(-1, levels.clamp(min=0)[None, None].expand(*lam.shape[:2], L, L))
    weights = weights * (levels >= 0).to(weights.dtype)
    return ((q @ k.transpose(-1, -2)) * weights) @ v


def _chunk(q, k, v, lam):
    B, H, L, D = q.shape
    o = (q * k).sum(-1, keepdim=True) * v * lam[..., :1]  # level 0: the token itself
    b = 0
    while (1 << b) < L:
        half = 1 << b
        window = 2 * half
        pad = (-L) % window
        qp, kp, vp = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        n = (L + pad) // window
        qw = qp.view(B, H, n, 2, half, D)[:, :, :, 1]  # queries: second half
        kw = kp.view(B, H, n, 2, half, D)[:, :, :, 0]  # keys: first half
        vw = vp.view(B, H, n, 2, half, D)[:, :, :, 0]
        if half <= D:  # small segments: quadratic inside the window is cheaper
            part = (qw @ kw.transpose(-1, -2)) @ vw
        else:  # large segments: one (D, D) state per window
            part = qw @ (kw.transpose(-1, -2) @ vw)
        full = torch.zeros(B, H, n, 2, half, D, dtype=q.dtype, device=q.device)
        full[:, :, :, 1] = part
        level = lam[..., b + 1:b + 2]
        o = o + full.view(B, H, n * window, D)[:, :, :L] * level
        b += 1
    return o
