"""Gated Slot Attention (Zhang et al. 2024): gated linear attention over a bounded set of
slots, read through a softmax."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int, check_real
from attnarena.mixers.recurrent import (PATTERNS, HeadNorm, RecurrentMixer, keep_mask,
                                        merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.registry import FORMS, register_mixer


@register_mixer(
    "gsa", family="gated linear attention",
    export_caveat="its chunk size is taken from the traced length and checked as a Python int",
    paper="Zhang et al. 2024, Gated Slot Attention for Efficient Linear-Time Sequence Modeling",
    complexity="O(L C m + L m D)", patterns=PATTERNS, forms=FORMS,
    form_notes={"chunk": "two passes"})
class GatedSlotAttention(RecurrentMixer):
    """GSA (Zhang et al. 2024): per head, ``slots`` (m) key and value slots forgotten at rates
    a_t = sigmoid(W_a x_t)^(1 / tau) (the paper's damping, tau = 8) and written with
    1 - a_t; o_t = V_t^T softmax(K_t q_t). Swish on q, k and v (the paper's feature map), a
    per-head RMS norm and a swish output gate before the output projection.

    Options: slots, tau, form, chunk_size.
    """

    def __init__(self, dim, heads=1, causal=False, *, slots=64, tau=8.0, form="chunk",
                 chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        check_int(slots, "slots")
        check_real(tau, "tau", low_open=True)
        self.slots, self.tau = slots, float(tau)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False)
                                                 for _ in range(3))
        self.a_proj = nn.Linear(dim, heads * slots, bias=False)
        self.g_proj = nn.Linear(dim, dim, bias=False)
        self.norm = HeadNorm(heads, self.head_dim)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _init_state(self, batch_size, device, dtype):
        shape = (batch_size, self.heads, self.slots, self.head_dim)
        zeros = dict(device=device, dtype=compute_dtype(dtype))
        return {"slots": (torch.zeros(shape, **zeros), torch.zeros(shape, **zeros))}

    def _sequence(self, x, state, mask, form):
        q, k, v = (split_heads(F.silu(p(x)), self.heads)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        keep = keep_mask(mask, x)
        log_alpha = F.logsigmoid(self.a_proj(x)) / self.tau * keep[..., None]  # 0 on padding
        log_alpha = log_alpha.unflatten(-1, (self.heads, self.slots)).transpose(1, 2)
        o, slots = ops.gated_slot_attention(q, k, v, log_alpha=log_alpha, form=form,
                                            chunk_size=self.chunk_size,
                                            initial_state=None if state is None
                                            else state["slots"], return_state=True)
        y = self.norm(merge_heads(o)) * F.silu(self.g_proj(x))
        return self.o_proj(y), {"slots": slots}
