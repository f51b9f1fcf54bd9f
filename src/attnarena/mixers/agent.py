"""Agent Attention (Han et al. 2024, "Agent Attention: On the Integration of Softmax and
Linear Attention")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "agent", family="agent attention",
    paper="Han et al. 2024, Agent Attention: On the Integration of Softmax and Linear "
          "Attention",
    complexity="O(L N D)", patterns=("self",), forms=("parallel",))
class AgentAttention(QKVMixer):
    """Agent attention (Han et al. 2024): N agent tokens A, pooled from the queries,
    first aggregate from all keys, V_A = softmax(A K^T / sqrt(d)) V, then broadcast back,
    O = softmax(Q A^T / sqrt(d)) V_A; a depthwise convolution over the values restores
    local diversity, as in the paper. O(L N D).

    Options: agents (N), conv_kernel (0 turns the convolution off).
    """

    def __init__(self, dim, heads=1, causal=False, *, agents=49, conv_kernel=3):
        super().__init__(dim, heads, causal)
        check_int(agents, "agents")
        if conv_kernel and conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd or 0, got {conv_kernel}")
        self.agents = agents
        self.conv = (nn.Conv1d(dim, dim, conv_kernel, padding=conv_kernel // 2, groups=dim)
                     if conv_kernel else None)

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        B, H, L, D = q.shape
        n = min(self.agents, L)
        agents = F.adaptive_avg_pool1d(q.reshape(B * H, L, D).transpose(1, 2), n)
        agents = agents.transpose(1, 2).reshape(B, H, n, D)
        scale = 1.0 / math.sqrt(D)
        gather = (agents @ k.transpose(-1, -2)) * scale  # (B, H, n, L)
        if mask is not None:
            gather = gather.masked_fill(~mask[:, None, None, :], float("-inf"))
        agent_values = torch.softmax(gather, dim=-1) @ v  # (B, H, n, D)
        o = torch.softmax((q @ agents.transpose(-1, -2)) * scale, dim=-1) @ agent_values
        o = self.merge_heads(o)
        if self.conv is not None:
            values = self.merge_heads(v)
            if mask is not None:
                values = values * mask[..., None].to(values.dtype)
            o = o + self.conv(values.transpose(1, 2)).transpose(1, 2)
        return self.o_proj(o)
