"""Cross-covariance attention (El-Nouby et al. 2021, "XCiT: Cross-Covariance Image
Transformers"): attention across channels instead of tokens. Each channel's queries and
keys over the whole sequence are L2-normalized; channel i attends to channel j with
softmax_j(tau <q_i, k_j>), a (D, D) map per head, and every token's values are mixed by it:
y_t = A v_t. Time O(L D^2), memory O(L D + D^2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena.ops._checks import check_key_mask, check_qkv


def cross_covariance_attention(q, k, v, *, temperature, mask=None, eps=1e-6):
    """Cross-covariance attention.

    Args:
        q, k, v: (B, H, L, D), one sequence (no cross pattern: the map needs both sides).
        temperature: (H,) positive scale of each head's channel scores.
        mask: (B, L) bool, True = real token; padding adds nothing to the covariances.

    Returns:
        (B, H, L, D) in the dtype of q.
    """
    check_qkv(q, k, v, same_length=True)
    if q.shape[-1] != v.shape[-1]:
        raise ValueError(f"cross-covariance attention mixes a token's values by a (D, D) map: "
                         f"v needs the width of q, got {v.shape[-1]} and {q.shape[-1]}")
    if not isinstance(temperature, torch.Tensor) or tuple(temperature.shape) != (q.shape[1],):
        raise ValueError(f"temperature must be a tensor of shape ({q.shape[1]},), got "
                         f"{tuple(getattr(temperature, 'shape', ())) or type(temperature)}")
    if mask is not None:
        check_key_mask(mask, q, k)
        keep = mask[:, None, :, None].to(q.dtype)
        q, k = q * keep, k * keep
    q_hat = F.normalize(q, dim=2, eps=eps)  # each channel over the tokens
    k_hat = F.normalize(k, dim=2, eps=eps)
    scores = q_hat.transpose(-1, -2) @ k_hat * temperature[:, None, None].to(q.dtype)
    return v @ scores.softmax(-1).transpose(-1, -2)
