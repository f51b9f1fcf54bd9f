"""Agent Attention (Han et al. 2024, "Agent Attention: On the Integration of Softmax and
Linear Attention")."""
from __future__ import annotations

from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "agent", family="agent attention",
    export_caveat=("a graph traced at one length does not reproduce the model at a longer one "
                   "(largest error 0.2% of the output's scale, over the 0.1% allowed)"),
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
        o = self.merge_heads(ops.agent_attention(q, k, v, agents=self.agents, mask=mask))
        if self.conv is not None:
            values = self.merge_heads(v)
            if mask is not None:
                values = values * mask[..., None].to(values.dtype)
            o = o + self.conv(values.transpose(1, 2)).transpose(1, 2)
        return self.o_proj(o)
