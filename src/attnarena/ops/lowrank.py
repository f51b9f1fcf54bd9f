"""Low-rank and landmark approximations of softmax attention: Linformer (Wang et al. 2020,
"Linformer: Self-Attention with Linear Complexity") and Nystromformer (Xiong et al. 2021,
"Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnarena.ops._checks import check_key_mask, check_qkv, tracing
from attnarena.ops.segments import segment_means
from attnarena.ops.softmax import masked_softmax


def linformer_attention(q, k, v, E, F_, *, mask=None):
    """Softmax attention over keys and values projected along the sequence:
    softmax(Q (E K)^T / sqrt(d)) (F V), O(L K D).

    Args:
        q: (B, H, L, D); k, v: (B, H, S, D).
        E, F_: (K, max_len) sequence projections (shared by heads); the first S columns are
            used, so S <= max_len.
        mask: optional (B, S) bool key mask: padded keys and values add nothing.
    """
    check_qkv(q, k, v)
    check_key_mask(mask, q, k)
    S = k.shape[2]
    if S > E.shape[1]:
        raise ValueError(f"the projections cover at most {E.shape[1]} keys, got {S}")
    if mask is not None:
        keep = mask[:, None, :, None].to(k.dtype)
        k, v = k * keep, v * keep
    k = E[:, :S].to(k.dtype) @ k  # (B, H, K, D)
    v = F_[:, :S].to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


def iterative_pinv(matrix, iterations=6):
    """Newton-Schulz iteration for the Moore-Penrose inverse, with the initialization of
    the Nystromformer paper (Xiong et al. 2021)."""
    abs_matrix = matrix.abs()
    scale = abs_matrix.sum(-1).amax(-1) * abs_matrix.sum(-2).amax(-1)
    z = matrix.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for _ in range(iterations):
        kz = matrix @ z
        z = 0.25 * z @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    return z


def nystrom_attention(q, k, v, *, landmarks, pinv="iterative", mask=None):
    """Nystrom approximation of softmax attention with landmarks the segment means of
    queries and keys: softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V, each
    softmax's scores scaled by 1/sqrt(d).

    Args:
        q, k, v: (B, H, L, D).
        landmarks: M (at most L are used).
        pinv: "iterative" (the paper's Newton-Schulz) or "exact".
        mask: optional (B, L) bool key mask; zero padded values beforehand.
    """
    check_qkv(q, k, v, same_length=True)
    check_key_mask(mask, q, k)
    if pinv not in ("iterative", "exact"):
        raise ValueError(f"pinv must be 'iterative' or 'exact', got {pinv!r}")
    B, H, L, D = q.shape
    q = q / math.sqrt(math.sqrt(D))
    k = k / math.sqrt(math.sqrt(D))
    # landmark i averages segment i of each row's real tokens (segments of near-equal size;
    # a row shorter than M has as many landmarks as tokens, the others absent)
    marks, present = segment_means(torch.cat([q, k], dim=-1), mask, min(landmarks, L))
    ql, kl = marks.split(D, dim=-1)  # one pass for the query and the key landmarks
    absent = None if not tracing() and bool(present.all()) else present[:, None, None, :]
    left = masked_softmax(q @ kl.transpose(-1, -2), absent)  # (B, H, L, m)
    middle = masked_softmax(ql @ kl.transpose(-1, -2), absent)  # (B, H, m, m)
    if absent is not None:  # an absent landmark's row is zero: pinv(blockdiag(M, 0)) keeps
        middle = middle * present[:, None, :, None].to(middle.dtype)  # the zero block
    right = masked_softmax(ql @ k.transpose(-1, -2),
                           None if mask is None else mask[:, None, None, :])  # (B, H, m, L)
    inverse = torch.linalg.pinv(middle) if pinv == "exact" else iterative_pinv(middle)
    return left @ (inverse @ (right @ v))
