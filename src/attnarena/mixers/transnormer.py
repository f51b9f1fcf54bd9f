"""TransNormer (Qin et al. 2022, "The Devil in Linear Transformer"): NormAttention, linear
attention whose scaling is replaced by a norm of its output, and DiagAttention, softmax
attention inside non-overlapping blocks, for the early layers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.mixers.linear import LinearAttentionBase
from attnarena.registry import FORMS, register_mixer

ATTENTIONS = ("norm", "diag")


@register_mixer(
    "transnormer", family="linear attention",
    paper="Qin et al. 2022, The Devil in Linear Transformer",
    complexity="O(L D^2) norm, O(L w D) diag", patterns=("self", "causal"), forms=FORMS)
class TransNormer(LinearAttentionBase):
    """TransNormer (Qin et al. 2022). ``attention="norm"``: NormAttention, O = RMSNorm(phi(Q)
    (phi(K)^T V)) per head, with phi(x) = 1 + elu(x) and no division by the sum of similarities
    (the paper's fix for unbounded gradients). ``attention="diag"``: DiagAttention, softmax
    attention within non-overlapping blocks of ``block`` tokens (the paper's remedy for
    attention dilution in early layers). The paper's model uses diag in the first half of the
    layers and norm in the rest, as a stack: ``"2*transnormer(attention=diag)+2*transnormer"``
    at depth 4.

    Options: attention, block, form and chunk_size (norm), bias.
    """

    normalize = False

    def __init__(self, dim, heads=1, causal=False, *, attention="norm", block=64,
                 form="chunk", chunk_size=64, bias=True):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size, bias=bias)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got "
                             f"{attention!r}")
        check_int(block, "block")
        self.attention, self.block = attention, block
        self.norm_weight = nn.Parameter(torch.ones(heads, 1, self.head_dim))

    def map_features(self, x, positions, is_query):
        return F.elu(x) + 1

    def rescale_output(self, o, counts):
        rms = torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)
        return o * rms * self.norm_weight.to(o.dtype)

    def _forward(self, x, context, mask):
        if self.attention == "norm":
            return super()._forward(x, context, mask)
        q, k, v = self.project(x, None)
        return self.o_proj(self.merge_heads(_block_attention(q, k, v, self.block,
                                                             self.causal, mask)))

    # decoding: the norm form's linear-attention state, or the current block's keys and
    # values for the diag form
    def _init_state(self, batch_size, device, dtype):
        if self.attention == "norm":
            return super()._init_state(batch_size, device, dtype)
        empty = torch.zeros(batch_size, self.heads, 0, self.head_dim, device=device,
                            dtype=dtype)
        return {"keys": empty, "values": empty.clone()}

    def _prefill(self, x, state):
        if self.attention == "norm":
            return super()._prefill(x, state)
        return Mixer._prefill(self, x, state)

    def _step(self, x_t, state):
        if self.attention == "norm":
            return super()._step(x_t, state)
        q, k, v = self.project(x_t[:, None], None)
        keys, values = state["keys"], state["values"]
        if keys.shape[2] == self.block:  # a new block starts
            keys, values = keys[:, :, :0], values[:, :, :0]
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        o = ops.softmax_attention(q, keys.to(q.dtype), values.to(q.dtype))
        return self.o_proj(self.merge_heads(o))[:, 0], {"keys": keys, "values": values}


def _block_attention(q, k, v, block, causal, mask):
    """Softmax attention within non-overlapping blocks of ``block`` tokens: (B, H, L, D)."""
    B, H, L, D = q.shape
    pad = (-L) % block
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        keep = F.pad(keep, (0, pad), value=False)
    n = (L + pad) // block
    blocks = [t.reshape(B, H, n, block, D) for t in (q, k, v)]
    allowed = keep.view(B, 1, n, 1, block)
    if causal:
        allowed = allowed & torch.ones(block, block, dtype=torch.bool,
                                       device=q.device).tril()
    # a query whose block holds no real key (padding only) gets zeros, not NaN
    o = ops.softmax_attention(*(t.reshape(B, H * n, block, D) for t in blocks),
                              mask=allowed.expand(B, H, n, block, block)
                              .reshape(B, H * n, block, block))
    return o.reshape(B, H, n * block, D)[:, :, :L]
