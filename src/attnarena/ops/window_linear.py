"""Sliding-window softmax with linear attention outside the window, under one normalizer:
the hybrid attention of LoLCATs (Zhang et al. 2025, "LoLCATs: On Low-Rank Linearizing of
Large Language Models").

Query i weighs key j by exp(q_i . k_j * scale) when j lies in its window and by
phi(q_i) . phi(k_j) otherwise, and divides by the sum of all its weights. The window is
the ``window`` most recent keys (j in (i - window, i]) when causal, and the keys within
``window - 1`` positions on either side otherwise. In log space this is a softmax over
one row of logits: q . k * scale inside the window, log(phi(q) . phi(k)) outside.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena._validate import check_int
from attnarena.ops._checks import check_key_mask
from attnarena.ops.softmax import masked_softmax

FORMS = ("parallel", "chunk")


def _window_logits(scores, similarity, inside, visible):
    """Logits: the scores inside the window, log similarity outside, -inf where unseen."""
    # clamped, not zero: log(0) would send NaN gradients through the unused branch
    outside = similarity.clamp_min(torch.finfo(similarity.dtype).tiny).log()
    return torch.where(inside, scores, outside).masked_fill(~visible, float("-inf"))


def _parallel(q, k, v, fq, fk, window, causal, mask, scale):
    L, S = q.shape[2], k.shape[2]
    i = torch.arange(L, device=q.device)[:, None]
    j = torch.arange(S, device=q.device)[None, :]
    inside = (i - j < window) & (j <= i) if causal else (i - j).abs() < window
    visible = (j <= i) if causal else torch.ones_like(inside)
    visible = visible[None, None]
    if mask is not None:
        visible = visible & mask[:, None, None, :]
    logits = _window_logits(q @ k.transpose(-1, -2) * scale, fq @ fk.transpose(-1, -2),
                            inside, visible)
    return masked_softmax(logits) @ v


def _chunk(q, k, v, fq, fk, window, causal, mask, scale, chunk_size):
    """Blocks of ``chunk_size`` >= window: each query block weighs its neighbouring key
    blocks exactly (softmax inside the window, linear outside it) and every farther block
    through running sums of phi(k) v^T and phi(k) (prefix sums, and suffix sums when not
    causal), so time and memory grow linearly with length."""
    B, H, L, D = q.shape
    c = chunk_size
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask
    n, (qb, kb, vb, fqb, fkb), keep_b = _blocks(q, k, v, fq, fk, keep, c)
    offsets = (-1, 0) if causal else (-1, 0, 1)

    def shifted(t, offset, fill):  # block b holds block b + offset (fill past the ends)
        if offset == 0:
            return t
        edge = torch.full_like(t.narrow(2, 0, 1), fill)
        if offset < 0:
            return torch.cat([edge, t.narrow(2, 0, n - 1)], dim=2)
        return torch.cat([t.narrow(2, 1, n - 1), edge], dim=2)

    near_k = torch.cat([shifted(kb, o, 0.0) for o in offsets], dim=3)  # (B, H, n, m c, D)
    near_v = torch.cat([shifted(vb, o, 0.0) for o in offsets], dim=3)
    near_fk = torch.cat([shifted(fkb, o, 0.0) for o in offsets], dim=3)
    near_keep = torch.cat([shifted(keep_b, o, False) for o in offsets], dim=3)
    i = torch.arange(c, device=q.device)[:, None]
    j = torch.cat([torch.arange(c, device=q.device) + o * c for o in offsets])[None, :]
    inside = (i - j < window) & (j <= i) if causal else (i - j).abs() < window
    visible = ((j <= i) if causal else torch.ones_like(inside))[None, None, None]
    visible = visible & near_keep[:, :, :, None, :]  # (B, 1, n, 1, m c)
    logits = _window_logits(qb @ near_k.transpose(-1, -2) * scale,
                            fqb @ near_fk.transpose(-1, -2), inside, visible)

    # far keys: blocks before b - 1 (and after b + 1 when not causal)
    kv = fkb.transpose(-1, -2) @ vb  # (B, H, n, F, Dv) per block
    z = fkb.sum(3)  # (B, H, n, F)
    far_kv = _exclusive_cumsum(kv, shift=2)
    far_z = _exclusive_cumsum(z, shift=2)
    if not causal:
        far_kv = far_kv + _exclusive_cumsum(kv.flip(2), shift=2).flip(2)
        far_z = far_z + _exclusive_cumsum(z.flip(2), shift=2).flip(2)
    far_num = fqb @ far_kv  # (B, H, n, c, Dv)
    far_den = (fqb * far_z[:, :, :, None]).sum(-1)  # (B, H, n, c)

    # one normalizer over near and far weights, stabilized by the larger of the two
    far_log = far_den.clamp_min(torch.finfo(far_den.dtype).tiny).log()
    top = torch.maximum(logits.amax(-1), far_log).detach()  # any shift gives the same o
    near_w = torch.exp(logits - top[..., None])
    far_scale = torch.exp(far_log - top) * (far_den > 0)
    ratio = far_num / far_den.clamp_min(torch.finfo(far_den.dtype).tiny)[..., None]
    num = near_w @ near_v + far_scale[..., None] * ratio
    den = near_w.sum(-1) + far_scale
    o = num / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]
    o = torch.where((den > 0)[..., None], o, torch.zeros_like(o))
    return o.reshape(B, H, n * c, -1)[:, :, :L]


def _blocks(q, k, v, fq, fk, keep, c):
    """Pad the length to n blocks of c (padding is not kept), zero the features of keys not
    kept, and split: (n, (B, H, n, c, X) views of q, k, v, fq, fk, (B, 1, n, c) keep)."""
    B, H, L, _ = q.shape
    n = -(-L // c)
    pad = n * c - L
    if pad:
        q, k, v, fq, fk = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v, fq, fk))
        keep = F.pad(keep, (0, pad), value=False)
    fk = fk * keep[:, None, :, None].to(fk.dtype)
    blocks = tuple(t.reshape(B, H, n, c, t.shape[-1]) for t in (q, k, v, fq, fk))
    return n, blocks, keep.reshape(B, 1, n, c)


def _exclusive_cumsum(x, shift):
    """Sum over blocks b' <= b - shift along dim 2 (zeros for the first ``shift``)."""
    total = x.cumsum(2)
    return torch.cat([torch.zeros_like(total[:, :, :shift]), total[:, :, :-shift]], dim=2)


def window_linear_attention(q, k, v, fq, fk, *, window: int, causal: bool = False, mask=None,
                            scale: float | None = None, form: str = "chunk",
                            chunk_size: int = 64):
    """LoLCATs' sliding-window + linear attention.

    Args:
        q, k: (B, H, L, D) queries and keys (their dot products score the window).
        v: (B, H, L, Dv).
        fq, fk: (B, H, L, F) non-negative feature maps of q and k (linear weights outside).
        window: keys per query scored by softmax (see the module docstring).
        causal: query i sees keys j <= i.
        mask: optional (B, L) bool over keys, True = real token.
        scale: of q . k; default D ** -0.5.
        form: "parallel" (the quadratic reference) or "chunk" (linear in L; blocks of
            ``max(chunk_size, window)``).

    Returns:
        (B, H, L, Dv).
    """
    check_int(window, "window")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if q.shape[2] != k.shape[2] or fq.shape[:3] != q.shape[:3] or fk.shape[:3] != k.shape[:3]:
        raise ValueError("window_linear_attention is self-attention: q, k, v, fq, fk must share "
                         f"(B, H, L), got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"fq {tuple(fq.shape)}, fk {tuple(fk.shape)}")
    check_key_mask(mask, q, k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if form == "parallel":
        return _parallel(q, k, v, fq, fk, window, causal, mask, scale)
    check_int(chunk_size, "chunk_size")
    return _chunk(q, k, v, fq, fk, window, causal, mask, scale, max(chunk_size, window))


def _factored_parallel(q, k, v, fq, fk, window, factor, keep, scale):
    L = q.shape[2]
    i = torch.arange(L, device=q.device)[:, None]
    j = torch.arange(L, device=q.device)[None, :]
    real = keep[:, None, None, :]
    inside = ((i - j < window) & (j <= i))[None, None] & real
    outside = (j <= i - window)[None, None] & real
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~inside, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = factor * torch.exp(scores - top) + (fq @ fk.transpose(-1, -2)) * outside
    return _divide(weights @ v, weights.sum(-1))


def _divide(num, den):
    tiny = torch.finfo(den.dtype).tiny
    o = num / den.clamp_min(tiny)[..., None]
    return torch.where((den > 0)[..., None], o, torch.zeros_like(o))


def _factored_chunk(q, k, v, fq, fk, window, factor, keep, scale, chunk_size):
    B, H, L, D = q.shape
    c = chunk_size
    n, (qb, kb, vb, fqb, fkb), keep_b = _blocks(q, k, v, fq, fk, keep, c)

    def previous(t, fill):  # block b holds block b - 1 (fill before the first)
        return torch.cat([torch.full_like(t.narrow(2, 0, 1), fill), t.narrow(2, 0, n - 1)], 2)

    near_k = torch.cat([previous(kb, 0.0), kb], dim=3)  # (B, H, n, 2c, D)
    near_v = torch.cat([previous(vb, 0.0), vb], dim=3)
    near_fk = torch.cat([previous(fkb, 0.0), fkb], dim=3)
    near_keep = torch.cat([previous(keep_b, False), keep_b], dim=3)[:, :, :, None, :]
    i = torch.arange(c, device=q.device)[:, None]
    j = torch.arange(-c, c, device=q.device)[None, :]
    inside = (i - j < window) & (j <= i) & near_keep
    outside = (j <= i - window) & near_keep
    scores = (qb @ near_k.transpose(-1, -2) * scale).masked_fill(~inside, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = factor[:, :, None] * torch.exp(scores - top) \
        + (fqb @ near_fk.transpose(-1, -2)) * outside
    # keys two blocks back and earlier: running sums of phi(k) v^T and phi(k)
    far_kv = _exclusive_cumsum(fkb.transpose(-1, -2) @ vb, shift=2)  # (B, H, n, F, Dv)
    far_z = _exclusive_cumsum(fkb.sum(3), shift=2)  # (B, H, n, F)
    num = weights @ near_v + fqb @ far_kv
    den = weights.sum(-1) + (fqb * far_z[:, :, :, None]).sum(-1)
    return _divide(num, den).reshape(B, H, n * c, -1)[:, :, :L]


def factored_window_linear_attention(q, k, v, fq, fk, *, window: int, window_factor,
                                     mask=None, scale: float | None = None,
                                     form: str = "chunk", chunk_size: int = 64):
    """LoLCATs' causal hybrid attention as released (Zhang et al. 2025): query i weighs
    each key of its window (j in (i - window, i]) by g exp(q_i . k_j * scale - m_i), m_i the
    largest of those scores and g the head's window factor in (0, 1), and every earlier key
    by phi(q_i) . phi(k_j); it divides by the sum of all its weights. (The feature maps
    compete with the window's weights after its largest is set to g, not with exp of the
    raw scores as in ``window_linear_attention``.)

    Args:
        q, k: (B, H, L, D); v: (B, H, L, Dv); fq, fk: (B, H, L, F) non-negative features.
        window: keys per query scored by softmax; window_factor: (H,) in (0, 1).
        mask: optional (B, L) bool over keys, True = real token.
        form: "parallel" (quadratic, the reference) or "chunk" (blocks of
            max(chunk_size, window), linear in L).

    Returns:
        (B, H, L, Dv).
    """
    check_int(window, "window")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    check_key_mask(mask, q, k)
    B, H, L, _ = q.shape
    factor = window_factor.to(q.dtype).view(1, H, 1, 1)
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if form == "parallel":
        return _factored_parallel(q, k, v, fq, fk, window, factor, keep, scale)
    check_int(chunk_size, "chunk_size")
    return _factored_chunk(q, k, v, fq, fk, window, factor, keep, scale,
                           max(chunk_size, window))


def factored_window_linear_step(q, keys, values, real, fq, state, *, window_factor,
                                scale: float | None = None):
    """One query of ``factored_window_linear_attention`` per head, for decoding: ``keys``,
    ``values`` (B, H, W, D) the window in any order (its newest key among them), ``real``
    (B, W) which slots hold a key (the newest always does), ``fq`` (B, H, F) the query's
    features, ``state`` (B, H, F, Dv + 1) the running sums of phi(k) [v, 1] over the keys
    before the window. q: (B, H, D) -> (B, H, Dv). Head groups: q, fq may hold G queries per
    key head as (B, H, G, ...), with ``window_factor`` then (H, G)."""
    grouped = q.dim() == 4
    q = q if grouped else q[:, :, None]
    fq = fq if grouped else fq[:, :, None]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ keys.transpose(-1, -2) * scale).masked_fill(~real[:, None, None, :],
                                                              float("-inf"))
    factor = window_factor.to(q.dtype)
    factor = factor.view(1, *factor.shape, 1) if grouped else factor.view(1, -1, 1, 1)
    weights = factor * torch.exp(scores - scores.amax(-1, keepdim=True))
    far = fq @ state  # (B, H, G, Dv + 1)
    o = (weights @ values + far[..., :-1]) / (weights.sum(-1) + far[..., -1])[..., None]
    return o if grouped else o[:, :, 0]
