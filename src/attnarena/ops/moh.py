"""Mixture-of-Head routing (Jin et al. 2024, "MoH: Multi-Head Attention as Mixture-of-Head
Attention")."""
from __future__ import annotations

import torch


def head_routing_weights(balance_logits, shared_logits=None, routed_logits=None, *, top_k=1):
    """Per-token weights of the heads, shared heads first: shared heads weigh in with a
    softmax over their logits, routed heads with a softmax over the top-k of theirs (the
    others get 0), the two groups balanced by a softmax over ``balance_logits`` (…, 2) and
    scaled by their head counts (shared) and k (routed), as in the paper.

    Args:
        balance_logits: (..., 2).  shared_logits: (..., S) or None.
        routed_logits: (..., R) or None (R >= top_k).

    Returns:
        (..., S + R) weights.
    """
    parts = []
    balance = torch.softmax(balance_logits, dim=-1)
    if shared_logits is not None:
        parts.append(torch.softmax(shared_logits, dim=-1) * balance[..., :1]
                     * shared_logits.shape[-1])
    if routed_logits is not None:
        top = routed_logits.topk(top_k, dim=-1)
        chosen = torch.full_like(routed_logits, float("-inf")).scatter(-1, top.indices,
                                                                       top.values)
        parts.append(torch.softmax(chosen, dim=-1) * balance[..., 1:] * top_k)
    return torch.cat(parts, dim=-1)
