"""DeltaNet and Gated DeltaNet: linear attention whose state is updated by the delta rule."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena import ops
from attnarena.mixers.recurrent import (PATTERNS, HeadNorm, RecurrentMixer, ShortConv,
                                        keep_mask, l2_normalize, merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.registry import FORMS, register_mixer


class _DeltaBase(RecurrentMixer):
    """q, k, v projections with short causal convolutions and SiLU, L2-normalized q and k,
    beta = sigmoid(W_b x) per head, a per-head RMS norm on the output."""

    pretrained_options = {}

    def __init__(self, dim, heads=1, causal=False, *, conv_size=4, form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        check_int(conv_size, "conv_size")
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False)
                                                 for _ in range(3))
        self.q_conv, self.k_conv, self.v_conv = (ShortConv(dim, conv_size) for _ in range(3))
        self.b_proj = nn.Linear(dim, heads, bias=True)
        self.norm = HeadNorm(heads, self.head_dim)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _init_state(self, batch_size, device, dtype):
        D, K = self.head_dim, self.q_conv.kernel
        conv = torch.zeros(batch_size, K - 1, self.dim, device=device, dtype=dtype)
        return {"S": torch.zeros(batch_size, self.heads, D, D, device=device,
                                 dtype=compute_dtype(dtype)),
                "conv": (conv, conv.clone(), conv.clone())}

    def _qkv_beta(self, x, state, mask):
        convs = (None, None, None) if state is None else state["conv"]
        outputs, new_convs = [], []
        for proj, conv, past in zip((self.q_proj, self.k_proj, self.v_proj),
                                    (self.q_conv, self.k_conv, self.v_conv), convs):
            y, c = conv(proj(x), past)
            outputs.append(split_heads(F.silu(y), self.heads))
            new_convs.append(c)
        q, k, v = outputs
        q = l2_normalize(q) / math.sqrt(self.head_dim)
        k = l2_normalize(k)
        keep = keep_mask(mask, x)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2) * keep[:, None, :]  # (B, H, L)
        return q, k, v, beta, keep, tuple(new_convs)


@register_mixer(
    "deltanet", family="delta rule",
    paper="Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over "
          "Sequence Length",
    complexity="O(L C D + L D^2)", patterns=PATTERNS, forms=FORMS,
    form_notes={"chunk": "WY"})
class DeltaNet(_DeltaBase):
    """DeltaNet (Schlag et al. 2021; chunkwise training by Yang et al. 2024, "Parallelizing
    Linear Transformers with the Delta Rule over Sequence Length"):
    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, with L2-normalized keys and short
    convolutions on q, k, v as in the paper.

    Options: conv_size, form, chunk_size.
    """

    def _sequence(self, x, state, mask, form):
        q, k, v, beta, _, convs = self._qkv_beta(x, state, mask)
        o, S = ops.delta_rule(q, k, v, beta=beta, form=form, chunk_size=self.chunk_size,
                              initial_state=None if state is None else state["S"],
                              return_state=True)
        return self.o_proj(self.norm(merge_heads(o))), {"S": S, "conv": convs}


@register_mixer(
    "gated_deltanet", family="delta rule",
    paper="Yang et al. 2025, Gated Delta Networks: Improving Mamba2 with Delta Rule",
    complexity="O(L C D + L D^2)", patterns=PATTERNS, forms=FORMS,
    form_notes={"chunk": "WY"})
class GatedDeltaNet(_DeltaBase):
    """Gated DeltaNet (Yang et al. 2025, "Gated Delta Networks"):
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, with Mamba-2's decay
    alpha_t = exp(-exp(A_log) softplus(W_a x_t + dt_bias)) and a swish output gate.

    Options: conv_size, form, chunk_size.
    """

    def __init__(self, dim, heads=1, causal=False, *, conv_size=4, form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, conv_size=conv_size, form=form,
                         chunk_size=chunk_size)
        self.a_proj = nn.Linear(dim, heads, bias=False)
        self.g_proj = nn.Linear(dim, dim, bias=False)
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
        dt = torch.exp(torch.empty(heads).uniform_(math.log(1e-3), math.log(0.1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def _sequence(self, x, state, mask, form):
        q, k, v, beta, keep, convs = self._qkv_beta(x, state, mask)
        rate = F.softplus(self.a_proj(x) + self.dt_bias).transpose(1, 2)  # (B, H, L)
        log_alpha = -self.A_log.exp()[None, :, None] * rate * keep[:, None, :]
        o, S = ops.gated_delta_rule(q, k, v, log_alpha=log_alpha, beta=beta, form=form,
                                    chunk_size=self.chunk_size,
                                    initial_state=None if state is None else state["S"],
                                    return_state=True)
        y = self.o_proj(self.norm(merge_heads(o)) * F.silu(self.g_proj(x)))
        return y, {"S": S, "conv": convs}
