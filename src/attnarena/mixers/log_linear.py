"""Log-linear attention (Guo et al. 2025, "Log-Linear Attention")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.mixers.recurrent import HeadNorm
from attnarena.registry import register_mixer


def fenwick_levels(L, device=None):
    """(L, L) level of key s for query t: 0 for s == t, 1 + the highest bit where t and s
    differ for s < t (the Fenwick partition of the prefix into power-of-two segments),
    -1 above the diagonal."""
    t = torch.arange(L, device=device)[:, None]
    s = torch.arange(L, device=device)[None, :]
    diff = (t ^ s).clamp(min=1)
    level = torch.floor(torch.log2(diff.double())).long() + 1
    level = torch.where(s == t, torch.zeros_like(level), level)
    return torch.where(s > t, torch.full_like(level, -1), level)


@register_mixer(
    "log_linear", family="linear attention",
    paper="Guo et al. 2025, Log-Linear Attention",
    complexity="O(L log L D^2)", patterns=("causal",), forms=("parallel", "chunk"))
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
        super().__init__(dim, heads, causal)
        if form not in self.info.forms:
            raise ValueError(f"form must be one of {sorted(self.info.forms)}, got {form!r}")
        self.form, self.levels = form, check_int(levels, "levels")
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
        o = self._parallel(q, k, v, lam) if self.form == "parallel" else self._chunk(q, k, v, lam)
        return self.o_proj(self.norm(self.merge_heads(o)))

    @staticmethod
    def _parallel(q, k, v, lam):
        L = q.shape[2]
        levels = fenwick_levels(L, q.device)  # (L, L)
        weights = lam.gather(-1, levels.clamp(min=0)[None, None].expand(*lam.shape[:2], L, L))
        weights = weights * (levels >= 0).to(weights.dtype)
        return ((q @ k.transpose(-1, -2)) * weights) @ v

    @staticmethod
    def _chunk(q, k, v, lam):
        B, H, L, D = q.shape
        o = (q * k).sum(-1, keepdim=True) * v * lam[..., :1]  # level 0: the token itself
        b = 0
        while (1 << b) < L:
            half = 1 << b
            window = 2 * half
            pad = (-L) % window
            qp, kp, vp = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            n = (L + pad) // window
            qw = qp.view(B, H, n, 2, half, D)[:, :, :, 1]  # queries: second half
            kw = kp.view(B, H, n, 2, half, D)[:, :, :, 0]  # keys: first half
            vw = vp.view(B, H, n, 2, half, D)[:, :, :, 0]
            if half <= D:  # small segments: quadratic inside the window is cheaper
                part = (qw @ kw.transpose(-1, -2)) @ vw
            else:  # large segments: one (D, D) state per window
                part = qw @ (kw.transpose(-1, -2) @ vw)
            full = torch.zeros(B, H, n, 2, half, D, dtype=q.dtype, device=q.device)
            full[:, :, :, 1] = part
            level = lam[..., b + 1:b + 2]
            o = o + full.view(B, H, n * window, D)[:, :, :L] * level
            b += 1
        return o
