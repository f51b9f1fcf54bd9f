"""RetNet's multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to
Transformer for Large Language Models")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena.mixers.recurrent import (PATTERNS, RecurrentMixer, keep_mask,
                                        merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.registry import FORMS, register_mixer


@register_mixer(
    "retention", family="decayed linear attention",
    step_export_caveat=("its group norm reshapes by the traced shape: ONNX Runtime refuses the "
                        "graph"),
    export_caveat="its group norm reshapes by the traced shape: ONNX Runtime refuses the graph",
    paper="Sun et al. 2023, Retentive Network: A Successor to Transformer for Large Language "
          "Models",
    complexity="O(L D^2)", patterns=PATTERNS, forms=FORMS)
class Retention(RecurrentMixer):
    """Multi-scale retention (Sun et al. 2023, "Retentive Network"): per head a fixed decay
    gamma_h = 1 - 2^(-5 - h), rotary (xPos-style) positions on q and k, k scaled by
    d^-1/2, a per-head GroupNorm on the output and a swish gate:
    MSR(X) = (swish(X W_G) * GroupNorm(Retention(X))) W_O.

    Options: rope (rotary positions, default on as in the paper), form, chunk_size.
    """

    pretrained_options = {}

    def __init__(self, dim, heads=1, causal=False, *, rope=True, form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        if rope and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        self.rope = rope
        self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.o_proj = (
            nn.Linear(dim, dim, bias=False) for _ in range(5))
        self.norm = nn.GroupNorm(heads, dim)
        gammas = 1.0 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float64))
        self.register_buffer("log_decay", gammas.log().float(), persistent=False)

    def _init_state(self, batch_size, device, dtype):
        D = self.head_dim
        return {"S": torch.zeros(batch_size, self.heads, D, D, device=device,
                                 dtype=compute_dtype(dtype)), "position": 0}

    def _sequence(self, x, state, mask, form):
        B, L, _ = x.shape
        position = 0 if state is None else state["position"]
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        k = k / math.sqrt(self.head_dim)
        if self.rope:
            positions = torch.arange(position, position + L, device=x.device)
            q, k = ops.rotary(q, positions), ops.rotary(k, positions)
        keep = keep_mask(mask, x)
        k = k * keep[:, None, :, None]
        log_a = self.log_decay.to(x.dtype)[None, :, None] * keep[:, None, :]  # pads: no decay
        o, S = ops.scalar_gated(q, k, v, log_a=log_a, form=form, chunk_size=self.chunk_size,
                                initial_state=None if state is None else state["S"],
                                return_state=True)
        o = merge_heads(o)
        o = self.norm(o.reshape(B * L, -1)).reshape(B, L, -1)
        y = self.o_proj(F.silu(self.g_proj(x)) * o)
        return y, {"S": S, "position": position + L}
