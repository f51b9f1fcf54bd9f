"""Hawk's recurrent block: the Real-Gated Linear Recurrent Unit (De et al. 2024, "Griffin:
Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models").
Griffin itself is a hybrid stack: RG-LRU layers with local attention (``"griffin"`` in
``attnarena.stack``)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_real
from attnarena.mixers.recurrent import PATTERNS, RecurrentMixer, ShortConv, keep_mask
from attnarena.ops.diagonal import DIAGONAL_FORMS
from attnarena.registry import register_mixer


class BlockDiagonal(nn.Module):
    """A linear map with ``blocks`` independent square blocks (Griffin's gate layers)."""

    def __init__(self, dim: int, blocks: int):
        super().__init__()
        width = dim // blocks
        self.weight = nn.Parameter(torch.randn(blocks, width, width) / math.sqrt(width))
        self.bias = nn.Parameter(torch.zeros(blocks, width))

    def forward(self, x):
        blocks = x.unflatten(-1, (self.weight.shape[0], -1))
        return (torch.einsum("...hi,hij->...hj", blocks, self.weight) + self.bias).flatten(-2)


@register_mixer(
    "rglru", family="gated recurrence",
    export_caveat=("its log-depth scan's layout is fixed at the traced length: ONNX Runtime "
                   "refuses the graph at another"),
    paper="De et al. 2024, Griffin: Mixing Gated Linear Recurrences with Local Attention for "
          "Efficient Language Models",
    complexity="O(L D log L) parallel scan, O(L D) recurrent", patterns=PATTERNS,
    forms=DIAGONAL_FORMS, form_notes={"parallel": "log-depth scan"})
class RGLRU(RecurrentMixer):
    """Hawk's recurrent block (De et al. 2024): two branches of the input, GeLU(W_g x) and a
    temporal convolution of W_u x followed by the RG-LRU, multiplied, then W_o. The RG-LRU:

        r_t = sigmoid(W_a u_t + b_a),  i_t = sigmoid(W_x u_t + b_x)   (block-diagonal)
        a_t = a^(c r_t),  a = sigmoid(Lambda),  c = 8
        h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t),   h_0 = i_0 * u_0

    with a initialized so that a^c lies in [0.9, 0.999] (the paper's range). The first step
    follows the released model (google-deepmind/recurrentgemma resets the recurrence at a
    sequence's first position: decay 0 and input multiplier 1), not sqrt(1 - a_0^2): that
    normalization keeps the state's scale steady over a long history, and with no history
    it would only shrink the first token's input (by up to sqrt(1 - 0.9^2) = 0.44 at
    initialization) for the rest of the sequence. RecurrentGemma's weights were trained
    this way, so the arena follows it. The first position is each row's first real token
    (padding before it is skipped); a decoding state remembers whether it has begun.

    Options: conv_size, c, form ("parallel": log-depth scan; "recurrent": loop).
    """

    def __init__(self, dim, heads=1, causal=False, *, conv_size=4, c=8.0, form="parallel"):
        super().__init__(dim, heads, causal, form=form, chunk_size=None)
        check_real(c, "c", low_open=True)
        self.c = float(c)
        self.gate_proj = nn.Linear(dim, dim)
        self.in_proj = nn.Linear(dim, dim)
        self.conv = ShortConv(dim, conv_size)
        self.gate_a, self.gate_x = BlockDiagonal(dim, heads), BlockDiagonal(dim, heads)
        # a^c uniform in [0.9, 0.999]: log a = log(u) / c, Lambda = logit(a)
        a = torch.empty(dim).uniform_(0.9, 0.999) ** (1.0 / self.c)
        self.Lambda = nn.Parameter(torch.log(a) - torch.log1p(-a))
        self.o_proj = nn.Linear(dim, dim)

    def _init_state(self, batch_size, device, dtype):
        width = self.Lambda.shape[0]  # dim, or fewer channels once heads are pruned
        return {"h": torch.zeros(batch_size, width, device=device, dtype=dtype),
                "conv": torch.zeros(batch_size, self.conv.kernel - 1, width, device=device,
                                    dtype=dtype),
                # 1 once the sequence has had a real token: its first step is a reset
                "begun": torch.zeros(batch_size, 1, device=device, dtype=dtype)}

    def _sequence(self, x, state, mask, form):
        keep = keep_mask(mask, x)[..., None]
        # padding enters the convolution as zeros, as the history before a sequence does
        u, conv = self.conv(self.in_proj(x) * keep, None if state is None else state["conv"])
        r, i = torch.sigmoid(self.gate_a(u)), torch.sigmoid(self.gate_x(u))
        # log a_t = c r_t log sigmoid(Lambda); padding neither decays nor writes
        log_a = self.c * r * F.logsigmoid(self.Lambda) * keep
        scale = torch.sqrt((-torch.expm1(2 * log_a)).clamp_min(1e-12))
        # the reset at the first real token: multiplier 1 (the decay acts on h = 0 there)
        begun = x.new_zeros(x.shape[0], 1) if state is None else state["begun"].to(x.dtype)
        first = (keep[..., 0].cumsum(1) == 1) & (keep[..., 0] > 0) & (begun == 0)
        scale = torch.where(first[..., None], torch.ones_like(scale), scale)
        h, last = ops.diagonal_recurrence(scale * i * u * keep, log_a,
                                          form="recurrent" if form == "recurrent" else
                                          "parallel",
                                          initial_state=None if state is None else state["h"],
                                          return_state=True)
        begun = torch.maximum(begun, keep[..., 0].amax(1, keepdim=True))
        return self.o_proj(F.gelu(self.gate_proj(x)) * h), {"h": last, "conv": conv,
                                                             "begun": begun}
