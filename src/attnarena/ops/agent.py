"""Agent attention (Han et al. 2024, "Agent Attention: On the Integration of Softmax and
Linear Attention")."""
from __future__ import annotations

import math

import torch.nn.functional as F

from attnarena._validate import check_int
from attnarena.ops._checks import check_qkv, check_key_mask
from attnarena.ops.softmax import masked_softmax


def agent_attention(q, k, v, *, agents, mask=None):
    """Two softmax attentions through N agent tokens A pooled from the queries:
    V_A = softmax(A K^T / sqrt(d)) V, then O = softmax(Q A^T / sqrt(d)) V_A. O(L N D).

    Args:
        q, k, v: (B, H, L, D) (self attention: one length).
        agents: N; sequences shorter than N use L agents (segment means of the queries).
        mask: optional (B, L) bool key mask, True = real token.

    Returns:
        (B, H, L, D).
    """
    check_qkv(q, k, v, same_length=True)
    check_int(agents, "agents")
    check_key_mask(mask, q, k)
    B, H, L, D = q.shape
    n = min(agents, L)
    pooled = F.adaptive_avg_pool1d(q.reshape(B * H, L, D).transpose(1, 2), n)
    pooled = pooled.transpose(1, 2).reshape(B, H, n, D)
    scale = 1.0 / math.sqrt(D)
    gather = (pooled @ k.transpose(-1, -2)) * scale  # (B, H, n, L)
    allowed = None if mask is None else mask[:, None, None, :]
    agent_values = masked_softmax(gather, allowed) @ v  # (B, H, n, D)
    return masked_softmax((q @ pooled.transpose(-1, -2)) * scale) @ agent_values
