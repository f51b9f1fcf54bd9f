"""Gated Linear Attention (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena.mixers.recurrent import (PATTERNS, HeadNorm, RecurrentMixer, keep_mask,
                                        merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.registry import FORMS, register_mixer


@register_mixer(
    "gla", family="decayed linear attention",
    paper="Yang et al. 2024, Gated Linear Attention Transformers with Hardware-Efficient "
          "Training",
    complexity="O(L D^2)", patterns=PATTERNS, forms=FORMS)
class GatedLinearAttention(RecurrentMixer):
    """GLA (Yang et al. 2024): S_t = diag(alpha_t) S_{t-1} + k_t v_t^T with data-dependent
    gates alpha_t = sigmoid(W2 W1 x_t + b)^(1/tau) from a low-rank projection (rank 16,
    tau = 16), key width dim/2, a per-head RMS norm and a swish output gate, as in the paper.

    Options: expand_k (key width / dim), gate_rank, gate_temperature, form, chunk_size.
    """

    pretrained_options = {"expand_k": 1.0}  # keys as wide as a pretrained model's

    def __init__(self, dim, heads=1, causal=False, *, expand_k=0.5, gate_rank=16,
                 gate_temperature=16.0, form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        key_dim = int(dim * expand_k)
        if key_dim < heads or key_dim % heads:
            raise ValueError(f"dim * expand_k = {key_dim} must be a positive multiple of heads "
                             f"({heads})")
        if gate_temperature <= 0:
            raise ValueError(f"gate_temperature must be > 0, got {gate_temperature}")
        self.key_dim, self.gate_temperature = key_dim, gate_temperature
        self.q_proj = nn.Linear(dim, key_dim, bias=False)
        self.k_proj = nn.Linear(dim, key_dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.g_proj = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Sequential(nn.Linear(dim, gate_rank, bias=False),
                                  nn.Linear(gate_rank, key_dim, bias=True))
        self.norm = HeadNorm(heads, self.head_dim)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _init_state(self, batch_size, device, dtype):
        return {"S": torch.zeros(batch_size, self.heads, self.key_dim // self.heads,
                                 self.head_dim, device=device, dtype=compute_dtype(dtype))}

    def _sequence(self, x, state, mask, form):
        q = split_heads(self.q_proj(x), self.heads)
        k = split_heads(self.k_proj(x), self.heads)
        v = split_heads(self.v_proj(x), self.heads)
        q = q * q.shape[-1] ** -0.5
        keep = keep_mask(mask, x)[:, None, :, None]
        log_g = split_heads(F.logsigmoid(self.gate(x)) / self.gate_temperature, self.heads)
        o, S = ops.gla(q, k * keep, v, log_g=log_g * keep, form=form,
                       chunk_size=self.chunk_size,
                       initial_state=None if state is None else state["S"], return_state=True)
        y = self.o_proj(F.silu(self.g_proj(x)) * self.norm(merge_heads(o)))
        return y, {"S": S}

    def _step(self, x_t, state):
        """One token, without the sequence machinery: (B, dim) in, (B, dim) out."""
        B, H = x_t.shape[0], self.heads
        q = self.q_proj(x_t).view(B, H, -1)
        log_g = F.logsigmoid(self.gate(x_t)) / self.gate_temperature
        o, S = ops.gla_step(q * q.shape[-1] ** -0.5, self.k_proj(x_t).view(B, H, -1),
                            self.v_proj(x_t).view(B, H, -1), log_g=log_g.view(B, H, -1),
                            state=state["S"])
        return self.o_proj(F.silu(self.g_proj(x_t)) * self.norm(o.reshape(B, -1))), {"S": S}
