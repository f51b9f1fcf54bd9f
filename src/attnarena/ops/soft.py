"""SOFT (Lu et al. 2021, "SOFT: Softmax-free Transformer with Linear Complexity"):
attention by a Gaussian kernel between queries and keys that share one projection,
S_ij = exp(-||q_i - q_j||^2 / (2 sqrt(D))), with no normalization; S is symmetric positive
semi-definite, so a Nystrom factorization through m landmarks holds,
S ~ P A^+ P^T (P: kernel of tokens to landmarks, A: of landmarks to each other), and the
Moore-Penrose inverse A^+ comes from Newton iterations, V_{k+1} = 2 V_k - V_k A V_k from
V_0 = alpha A^T, alpha = 2 / ||A||_1^2 (the paper's). O(L m D + m^3) time.
"""
from __future__ import annotations

import math

import torch

from attnarena._validate import check_int
from attnarena.ops._checks import check_key_mask, check_qkv
from attnarena.ops.segments import segment_means


def gaussian_kernel(a, b, scale):
    """exp(-scale ||a_i - b_j||^2) for (..., N, D) and (..., M, D) -> (..., N, M)."""
    squared = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] \
        - 2 * a @ b.transpose(-1, -2)
    return torch.exp(-scale * squared.clamp_min(0))


def newton_inverse(matrix, iterations):
    """The Moore-Penrose inverse of a symmetric positive semi-definite matrix by Newton
    iterations from alpha A^T, alpha = 2 / ||A||_1^2."""
    norm = matrix.abs().sum(-2).amax(-1)  # the largest column sum
    inverse = matrix.transpose(-1, -2) * (2.0 / norm ** 2)[..., None, None]
    for _ in range(iterations):
        inverse = 2 * inverse - inverse @ matrix @ inverse
    return inverse


def soft_attention(q, v, *, landmarks, iterations=20, mask=None):
    """Softmax-free attention, Nystrom-factorized.

    Args:
        q: (B, H, L, D) shared queries and keys; v: (B, H, L, Dv).
        landmarks: m, the means of m segments of each row's real queries (at most its
            number of real tokens are used; ``segment_means``).
        iterations: Newton iterations for the inverse.
        mask: (B, L) bool, True = real token: padded tokens are neither keys nor part of a
            landmark.

    Returns:
        (B, H, L, Dv) = P A^+ P^T v.
    """
    check_qkv(q, q, v, same_length=True)
    check_int(landmarks, "landmarks")
    check_int(iterations, "iterations", minimum=0)
    check_key_mask(mask, q, q)
    B, H, L, D = q.shape
    scale = 1.0 / (2.0 * math.sqrt(D))
    marks, present = segment_means(q, mask, min(landmarks, L))
    present = present[:, None].to(q.dtype)  # (B, 1, M): rows shorter than m have fewer
    keep = 1.0 if mask is None else mask[:, None, :, None].to(q.dtype)
    # a landmark a row does not have is a zero column of P and a zero row and column of A:
    # A^+ of blockdiag(A_row, 0) is blockdiag(A_row^+, 0), and Newton's iterations (from
    # the same norm) keep that block zero, so the row's result is its own m's
    P = gaussian_kernel(q, marks, scale) * present[..., None, :]  # (B, H, L, M)
    A = gaussian_kernel(marks, marks, scale) * present[..., :, None] * present[..., None, :]
    right = (P * keep).transpose(-1, -2) @ (v * keep)  # padded keys add nothing
    return P @ (newton_inverse(A, iterations) @ right)
