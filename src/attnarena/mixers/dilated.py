"""LongNet's dilated attention (Ding et al. 2023, "LongNet: Scaling Transformers to
1,000,000,000 Tokens")."""
from __future__ import annotations

import math

import torch

from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "dilated", family="sparse attention",
    paper="Ding et al. 2023, LongNet: Scaling Transformers to 1,000,000,000 Tokens",
    complexity="O(L sum(w / r^2) D)", patterns=("self", "causal"), forms=("parallel",))
class DilatedAttention(QKVMixer):
    """Dilated attention (Ding et al. 2023): for each (segment length w, dilation r) the
    sequence is cut into segments of w tokens and, in each, every r-th token (offset by
    the head index, so heads cover different positions) attends densely to the others
    selected; the branches are mixed with weights proportional to their softmax
    denominators, which equals softmax attention over all the keys the branches give a
    query (counted once per branch).

    Options: segment_lengths, dilation_rates (same length; each w divisible by its r).
    """

    def __init__(self, dim, heads=1, causal=False, *, segment_lengths=(64, 256, 1024),
                 dilation_rates=(1, 4, 16)):
        super().__init__(dim, heads, causal)
        segment_lengths, dilation_rates = tuple(segment_lengths), tuple(dilation_rates)
        if not segment_lengths or len(segment_lengths) != len(dilation_rates):
            raise ValueError("segment_lengths and dilation_rates must be non-empty and "
                             f"equally long, got {segment_lengths} and {dilation_rates}")
        for w, r in zip(segment_lengths, dilation_rates):
            if not (isinstance(w, int) and isinstance(r, int)) or w < 1 or r < 1 or w % r:
                raise ValueError(f"each segment length must be a positive multiple of its "
                                 f"dilation rate, got w={w}, r={r}")
        self.segment_lengths, self.dilation_rates = segment_lengths, dilation_rates

    def branch_positions(self, L, w, r, device):
        """(H, n, w // r) positions each head selects in each of the n segments."""
        n = -(-L // w)
        offsets = torch.arange(self.heads, device=device) % r
        within = torch.arange(0, w, r, device=device)
        starts = torch.arange(n, device=device) * w
        return starts[None, :, None] + offsets[:, None, None] + within[None, None, :]

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        B, H, L, D = q.shape
        keep = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask
        outputs, lses = [], []
        for w, r in zip(self.segment_lengths, self.dilation_rates):
            pos = self.branch_positions(L, w, r, x.device)  # (H, n, m)
            n, m = pos.shape[1:]
            valid = pos < L
            flat = pos.clamp(max=L - 1).reshape(H, n * m)
            index = flat[None, :, :, None].expand(B, H, n * m, D)
            qs, ks, vs = (t.gather(2, index).view(B, H, n, m, D) for t in (q, k, v))
            key_ok = valid[None] & keep[:, flat].view(B, H, n, m)  # (B, H, n, m)
            allowed = key_ok[..., None, :]
            if self.causal:
                allowed = allowed & torch.ones(m, m, dtype=torch.bool, device=x.device).tril()
            scores = (qs @ ks.transpose(-1, -2)) / math.sqrt(D)
            scores = scores.masked_fill(~allowed, float("-inf"))
            lse = torch.logsumexp(scores, dim=-1)  # (B, H, n, m)
            o = torch.softmax(scores, dim=-1).nan_to_num() @ vs
            # scatter back; positions a branch does not select keep -inf weight
            full_o = q.new_zeros(B, H, L + 1, D)
            full_lse = q.new_full((B, H, L + 1), float("-inf"))
            target = torch.where(valid, pos, L).reshape(H, n * m)  # spill slot L for padding
            full_o.scatter_(2, target[None, :, :, None].expand(B, H, n * m, D),
                            o.reshape(B, H, n * m, D))
            full_lse.scatter_(2, target[None].expand(B, H, n * m), lse.reshape(B, H, n * m))
            outputs.append(full_o[:, :, :L])
            lses.append(full_lse[:, :, :L])
        weights = torch.softmax(torch.stack(lses), dim=0).nan_to_num()  # (branches, B, H, L)
        o = (weights[..., None] * torch.stack(outputs)).sum(0)
        return self.o_proj(self.merge_heads(o))
