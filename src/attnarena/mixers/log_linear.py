"""Log-linear attention (Guo et al. 2025, "Log-Linear Attention")."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.mixers.recurrent import HeadNorm
from attnarena.registry import register_mixer


@register_mixer(
    "log_linear", family="linear attention",
    export_caveat=("the graph traced at one length is wrong at three times it (largest error 61% "
                   "of the output's scale): its levels are fixed by the traced length"),
    paper="Guo et al. 2025, Log-Linear Attention",
    complexity="O(L log L D^2)", patterns=("causal",), forms=("parallel", "chunk"),
    form_notes={"chunk": "Fenwick levels, O(L log L)"})
class LogLinearAttention(QKVMixer):
    """Log-linear attention (Guo et al. 2025) over a linear-attention core: the prefix of
    each query is split Fenwick-style into O(log L) segments (the token itself, then
    power-of-two segments), each with its own hidden state, and the query reads them with
    data-dependent per-level weights lambda_t = softplus(W x_t):
    o_t = sum_l lambda_t^(l) q_t^T S_t^(l). The ``parallel`` form is the masked quadratic
    form (Q K^T * M) V with M_ts = lambda_t^(level(t, s)); the ``chunk`` form works level by
    level on aligned windows in O(L log L). Output RMS-normed per head.

    Options: form, levels (supports lengths up to 2^(levels - 1)).
    """

    def __init__(self, dim, heads=1, causal=True, *, form="chunk", levels=20):
        super().__init__(dim, heads, causal, form=form)
        self.levels = check_int(levels, "levels")
        self.level_weights = nn.Linear(dim, heads * levels)
        self.norm = HeadNorm(heads, self.head_dim)

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        B, H, L, D = q.shape
        if L > 2 ** (self.levels - 1):
            raise ValueError(f"log_linear with levels={self.levels} supports length "
                             f"<= {2 ** (self.levels - 1)}, got {L}")
        q = q / math.sqrt(D)
        if mask is not None:
            k = k * mask[:, None, :, None].to(k.dtype)
        lam = F.softplus(self.level_weights(x)).view(B, L, H, self.levels).permute(0, 2, 1, 3)
        o = ops.log_linear_attention(q, k, v, lam, form=self.form)
        return self.o_proj(self.norm(self.merge_heads(o)))
