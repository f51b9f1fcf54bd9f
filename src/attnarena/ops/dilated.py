"""LongNet's dilated attention (Ding et al. 2023, "LongNet: Scaling Transformers to
1,000,000,000 Tokens")."""
from __future__ import annotations

import math

import torch

from attnarena.ops._checks import check_key_mask, check_qkv
from attnarena.ops.softmax import masked_softmax, merge_partial_attention


def check_dilation(segment_lengths, dilation_rates):
    """The branches as two equally long tuples; each segment length a positive multiple of
    its dilation rate."""
    segment_lengths, dilation_rates = tuple(segment_lengths), tuple(dilation_rates)
    if not segment_lengths or len(segment_lengths) != len(dilation_rates):
        raise ValueError("segment_lengths and dilation_rates must be non-empty and "
                         f"equally long, got {segment_lengths} and {dilation_rates}")
    for w, r in zip(segment_lengths, dilation_rates):
        if not (isinstance(w, int) and isinstance(r, int)) or w < 1 or r < 1 or w % r:
            raise ValueError(f"each segment length must be a positive multiple of its "
                             f"dilation rate, got w={w}, r={r}")
    return segment_lengths, dilation_rates


def branch_positions(L, w, r, heads, device=None):
    """(heads, n, w // r) positions each head selects in each of the n segments of w tokens:
    every r-th token, offset by the head index so that heads cover different positions."""
    n = -(-L // w)
    offsets = torch.arange(heads, device=device) % r
    within = torch.arange(0, w, r, device=device)
    starts = torch.arange(n, device=device) * w
    return starts[None, :, None] + offsets[:, None, None] + within[None, None, :]


def dilated_attention(q, k, v, *, segment_lengths, dilation_rates, causal=False, mask=None):
    """Dilated attention: for each branch (segment length w, dilation r) the sequence is cut
    into segments of w tokens and, in each, the tokens ``branch_positions`` selects attend
    densely to each other; the branches are merged by their softmax normalizers, which
    equals softmax attention over all the keys the branches give a query (counted once per
    branch).

    Args:
        q, k, v: (B, H, L, D).
        segment_lengths, dilation_rates: the branches (equally long; w divisible by r).
        causal: a query sees only keys at or before it.
        mask: optional (B, L) bool key mask, True = real token.

    Returns:
        (B, H, L, D); a query no branch selects reads zeros.
    """
    check_qkv(q, k, v, same_length=True)
    check_key_mask(mask, q, k)
    segment_lengths, dilation_rates = check_dilation(segment_lengths, dilation_rates)
    B, H, L, D = q.shape
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask
    outputs, lses = [], []
    for w, r in zip(segment_lengths, dilation_rates):
        pos = branch_positions(L, w, r, H, q.device)  # (H, n, m)
        n, m = pos.shape[1:]
        valid = pos < L
        flat = pos.clamp(max=L - 1).reshape(H, n * m)
        index = flat[None, :, :, None].expand(B, H, n * m, D)
        qs, ks, vs = (t.gather(2, index).view(B, H, n, m, D) for t in (q, k, v))
        key_ok = valid[None] & keep[:, flat].view(B, H, n, m)  # (B, H, n, m)
        allowed = key_ok[..., None, :]
        if causal:
            allowed = allowed & torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
        scores = (qs @ ks.transpose(-1, -2)) / math.sqrt(D)
        weights, lse = masked_softmax(scores, allowed, return_lse=True)  # lse: (B, H, n, m)
        o = weights @ vs
        # scatter back; positions a branch does not select keep -inf weight
        full_o = q.new_zeros(B, H, L + 1, D)
        full_lse = q.new_full((B, H, L + 1), float("-inf"))
        target = torch.where(valid, pos, L).reshape(H, n * m)  # spill slot L for padding
        full_o.scatter_(2, target[None, :, :, None].expand(B, H, n * m, D),
                        o.reshape(B, H, n * m, D))
        full_lse.scatter_(2, target[None].expand(B, H, n * m), lse.reshape(B, H, n * m))
        outputs.append(full_o[:, :, :L])
        lses.append(full_lse[:, :, :L])
    return merge_partial_attention(outputs, lses)
