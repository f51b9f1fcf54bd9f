"""The mLSTM cell of xLSTM (Beck et al. 2024) as a token mixer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena.mixers.recurrent import (PATTERNS, HeadNorm, RecurrentMixer, keep_mask,
                                        merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.registry import FORMS, register_mixer


@register_mixer(
    "mlstm", family="gated linear RNN",
    paper="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory",
    complexity="O(L D^2)", patterns=PATTERNS, forms=FORMS)
class MLSTM(RecurrentMixer):
    """mLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): a matrix memory
    C_t = f_t C_{t-1} + i_t v_t k_t^T with exponential input gates, sigmoid forget gates and
    the max-normalized readout h_t = o_t * (C_t q_t / max(|n_t . q_t|, 1)), stabilized as in
    the paper. Gates are per head from linear maps of x (forget bias initialized in
    [3, 6] as in the paper's code), a sigmoid output gate and a per-head norm.

    Options: form, chunk_size.
    """

    pretrained_options = {}

    def __init__(self, dim, heads=1, causal=False, *, form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        self.q_proj, self.k_proj, self.v_proj, self.o_gate, self.o_proj = (
            nn.Linear(dim, dim, bias=False) for _ in range(5))
        self.gates = nn.Linear(dim, 2 * heads)
        with torch.no_grad():
            self.gates.weight.mul_(0.1)
            self.gates.bias[:heads].zero_()
            self.gates.bias[heads:] = torch.linspace(3.0, 6.0, heads)
        self.norm = HeadNorm(heads, self.head_dim)

    def _init_state(self, batch_size, device, dtype):
        D, dtype = self.head_dim, compute_dtype(dtype)
        return {"S": torch.zeros(batch_size, self.heads, D, D + 1, device=device, dtype=dtype),
                "m": torch.zeros(batch_size, self.heads, device=device, dtype=dtype)}

    def _sequence(self, x, state, mask, form):
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        k = k / math.sqrt(self.head_dim)
        # Gates in float32: they are exponentiated, which bfloat16's 8-bit mantissa cannot take.
        wide = compute_dtype(x.dtype)
        gates = F.linear(x.to(wide), self.gates.weight.to(wide), self.gates.bias.to(wide))
        input_gate, forget_gate = gates.transpose(1, 2).chunk(2, dim=1)  # (B, H, L)
        if mask is not None:  # padded tokens: input gate 0, forget gate 1
            pad = ~keep_mask(mask, x).bool()[:, None, :]
            input_gate = input_gate.masked_fill(pad, float("-inf"))
            forget_gate = forget_gate.masked_fill(pad, float("inf"))
        initial = None if state is None else (state["S"], state["m"])
        h, (S, m) = ops.mlstm(q, k, v, input_gate=input_gate, forget_gate=forget_gate,
                              form=form, chunk_size=self.chunk_size, initial_state=initial,
                              return_state=True)
        y = self.o_proj(torch.sigmoid(self.o_gate(x)) * self.norm(merge_heads(h)))
        return y, {"S": S, "m": m}
