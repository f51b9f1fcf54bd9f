"""Agent attention (Han et al. 2024, "Agent Attention: On the Integration of Softmax and
Linear Attention")."""
from __future__ import annotations

import math

from attnarena._validate import check_int
from attnarena.ops._checks import check_key_mask, check_qkv, tracing
from attnarena.ops.segments import segment_means
from attnarena.ops.softmax import masked_softmax


def agent_attention(q, k, v, *, agents, mask=None):
    """Two softmax attentions through N agent tokens A pooled from the queries:
    V_A = softmax(A K^T / sqrt(d)) V, then O = softmax(Q A^T / sqrt(d)) V_A. O(L N D).

    Args:
        q, k, v: (B, H, L, D) (self attention: one length).
        agents: N; sequences shorter than N use as many agents as real tokens (segment
            means of the real queries, ``segment_means``).
        mask: optional (B, L) bool key mask, True = real token.

    Returns:
        (B, H, L, D).
    """
    check_qkv(q, k, v, same_length=True)
    check_int(agents, "agents")
    check_key_mask(mask, q, k)
    B, H, L, D = q.shape
    # agent i: the mean of segment i of each row's real queries (a row shorter than N has
    # as many agents as tokens, the others absent)
    pooled, present = segment_means(q, mask, min(agents, L))
    scale = 1.0 / math.sqrt(D)
    gather = (pooled @ k.transpose(-1, -2)) * scale  # (B, H, n, L)
    allowed = None if mask is None else mask[:, None, None, :]
    agent_values = masked_softmax(gather, allowed) @ v  # (B, H, n, D)
    absent = None if not tracing() and bool(present.all()) else present[:, None, None, :]
    return masked_softmax((q @ pooled.transpose(-1, -2)) * scale, absent) @ agent_values
