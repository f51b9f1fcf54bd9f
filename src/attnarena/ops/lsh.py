"""Reformer's LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnarena._validate import check_int
from attnarena.ops._checks import check_key_mask, check_qkv, compute_dtype
from attnarena.ops.softmax import masked_softmax, merge_partial_attention

SELF_PENALTY = -1e5  # the paper lets a token attend to itself only when nothing else is there


def lsh_buckets(x, buckets, seed, round_index):
    """(B, H, L, D) -> (B, H, L) bucket ids of angular LSH, h(x) = argmax([xR; -xR]), with
    the rotation R drawn from ``seed`` and the round (deterministic)."""
    if buckets == 1:
        return torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
    g = torch.Generator().manual_seed(seed * 7919 + round_index)
    rotation = torch.randn(x.shape[-1], buckets // 2, generator=g).to(x)
    rotated = x @ rotation
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


def lsh_attention(qk, v, *, buckets=8, rounds=1, chunk_size=64, seed=0, causal=False,
                  mask=None):
    """LSH attention with shared queries and keys (keys are the unit-normalized queries):
    tokens are sorted by (bucket, position) and cut into chunks of ``chunk_size``; each
    chunk attends to itself and the previous chunk, within the same bucket, never to itself
    unless nothing else is visible. The ``rounds`` hashes are merged by their softmax
    normalizers. Scores are computed in float32 for half-precision inputs (the self penalty
    does not fit float16).

    Args:
        qk: (B, H, L, D) shared query/key projections; v: (B, H, L, D).
        buckets: 1 or even; rounds, chunk_size: positive; seed: the rotations' seed.
        mask: optional (B, L) bool key mask.

    Returns:
        (B, H, L, D) in the compute dtype (float32 for half inputs).
    """
    check_qkv(qk, qk, v, same_length=True)
    check_key_mask(mask, qk, qk)
    for name, value in (("buckets", buckets), ("rounds", rounds), ("chunk_size", chunk_size)):
        check_int(value, name)
    if buckets > 1 and buckets % 2:
        raise ValueError(f"buckets must be 1 or even (rotations give +-xR), got {buckets}")
    wide = compute_dtype(qk.dtype)
    qk, v = qk.to(wide), v.to(wide)
    B, H, L, D = qk.shape
    keys = F.normalize(qk, dim=-1)
    keep = torch.ones(B, L, dtype=torch.bool, device=qk.device) if mask is None else mask
    outs, lses = [], []
    for round_index in range(rounds):
        o, lse = _round(qk, keys, v, keep, lsh_buckets(qk, buckets, seed, round_index),
                        chunk_size, causal)
        outs.append(o)
        lses.append(lse)
    # a query that sees nothing in any round (a padded one) reads zeros
    return merge_partial_attention(outs, lses)


def _round(q, k, v, keep, buckets, chunk_size, causal):
    B, H, L, D = q.shape
    C = min(chunk_size, L)
    pad = (-L) % C
    positions = torch.arange(L, device=q.device).expand(B, H, L)
    # sort by bucket, then position; padded tokens go after every real one, so a padded row
    # is chunked as the same sequence alone
    rank = torch.where(keep[:, None], buckets, buckets.amax() + 1)
    order = (rank * L + positions).argsort(dim=-1)
    if pad:  # padding goes last, in its own bucket, and is never attended to
        order = torch.cat([order, torch.full((B, H, pad), L, device=q.device)], dim=-1)
        q, k, v = (F.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
        buckets = F.pad(buckets, (0, 1), value=-1)
        keep = F.pad(keep, (0, 1), value=False)
    n = (L + pad) // C
    index = order[..., None].expand(-1, -1, -1, D)
    sq, sk, sv = (t.gather(2, index).view(B, H, n, C, D) for t in (q, k, v))
    sb = buckets.gather(2, order).view(B, H, n, C)
    sp = order.view(B, H, n, C)
    sk_keep = keep[:, None].expand(B, H, -1).gather(2, order).view(B, H, n, C)
    if n > 1:  # keys: own chunk and the previous one, the first chunk's being the row's
        # last chunk of real tokens (a row of one such chunk looks back at nothing)
        chunks = (keep.sum(-1) + C - 1) // C  # (B,)
        j = torch.arange(n, device=q.device)
        previous = torch.where(j > 0, j - 1, (chunks - 1).clamp_min(0)[:, None])  # (B, n)
        back_keep = (chunks > 1)[:, None, None, None]

        def look_back(t):
            index = previous[:, None, :, None].expand(B, H, n, C)
            if t.dim() == 5:
                back = t.gather(2, index[..., None].expand(-1, -1, -1, -1, t.shape[-1]))
            else:
                back = t.gather(2, index)
            return torch.cat([t, back], dim=3)
        kk, vv, kb, kp, kkeep = map(look_back, (sk, sv, sb, sp, sk_keep))
        kkeep = torch.cat([sk_keep, kkeep[..., C:] & back_keep], dim=3)
    else:
        kk, vv, kb, kp, kkeep = sk, sv, sb, sp, sk_keep
    scores = (sq @ kk.transpose(-1, -2)) / math.sqrt(D)  # (B, H, n, C, C or 2C)
    allowed = (sb[..., :, None] == kb[..., None, :]) & kkeep[..., None, :]
    if causal:
        allowed = allowed & (kp[..., None, :] <= sp[..., :, None])
    scores = scores.masked_fill(~allowed, float("-inf"))
    scores = torch.where(kp[..., None, :] == sp[..., :, None],
                         torch.where(allowed, torch.full_like(scores, SELF_PENALTY), scores),
                         scores)
    weights, lse = masked_softmax(scores, return_lse=True)
    o = weights @ vv  # (B, H, n, C, D)
    # undo the sort
    result = q.new_zeros(B, H, L + (1 if pad else 0), D)
    result.scatter_(2, index, o.view(B, H, n * C, D))
    result_lse = q.new_zeros(B, H, L + (1 if pad else 0))
    result_lse.scatter_(2, order, lse.view(B, H, n * C))
    return result[:, :, :L], result_lse[:, :, :L]
