"""Softmax attention (Vaswani et al. 2017, "Attention Is All You Need"), with an optional
sliding window (local attention, as benchmarked in Long Range Arena, Tay et al. 2021) and
ALiBi biases (Press et al. 2022, "Train Short, Test Long").

Dense cases go through ``torch.nn.functional.scaled_dot_product_attention``. A sliding window
over a long self-attention sequence takes a blocked path that costs O(L * window * D).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnarena._validate import check_int
from attnarena.ops._checks import check_key_mask, check_qkv


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's head slopes: a geometric sequence starting at 2^(-8/n) (Press et al. 2022).

    For a head count that is not a power of two, the paper's recipe takes the slopes of the
    next lower power of two and fills the rest with every other slope of the next higher one.
    """
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    low = 2 ** math.floor(math.log2(heads))
    slopes = powers(low)
    if low < heads:
        slopes += powers(2 * low)[0::2][: heads - low]
    return torch.tensor(slopes)


def _check_mask(mask, q, k) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor (True = attend), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    B, H, L, _ = q.shape
    S = k.shape[2]
    if mask.dim() == 2:
        check_key_mask(mask, q, k)
        return mask[:, None, None, :]
    if mask.dim() == 4:
        try:
            torch.broadcast_shapes(mask.shape, (B, H, L, S))
        except RuntimeError:
            raise ValueError(f"a 4-D mask must broadcast to (B, H, L, S) = {(B, H, L, S)}, "
                             f"got {tuple(mask.shape)}") from None
        return mask
    raise ValueError(f"mask must be (batch, key_length) or broadcastable to (B, H, L, S), "
                     f"got shape {tuple(mask.shape)}")


def _structure_mask(L, S, causal, window, device) -> torch.Tensor | None:
    """(L, S) bool mask from causality (top-left aligned: key j <= query i) and the window."""
    if not causal and window is None:
        return None
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    allowed = torch.ones(L, S, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & (j <= i)
    if window is not None:
        allowed = allowed & ((i - j).abs() < window)
    return allowed


def _alibi_bias(slopes, L, S, causal, device, dtype) -> torch.Tensor:
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    distance = (i - j).abs().to(dtype)
    return -slopes.to(device=device, dtype=dtype)[:, None, None] * distance  # (H, L, S)


def softmax_attention(q, k, v, *, causal=False, mask=None, window=None, scale=None,
                      alibi_slopes=None, dropout=0.0):
    """Scaled dot-product attention, optionally causal, windowed, masked and ALiBi-biased.

    Args:
        q: (B, H, L, D) queries.  k: (B, H, S, D) keys.  v: (B, H, S, Dv) values.
        causal: query i sees keys j <= i (top-left aligned when L != S).
        mask: bool, True = attend: a key mask (B, S), or a mask broadcastable to (B, H, L, S).
        window: if set, query i sees only keys with |i - j| < window (with ``causal``, the
            ``window`` most recent keys, itself included).
        scale: score scale; default 1/sqrt(D).
        alibi_slopes: (H,) slopes; adds -slope * |i - j| to the scores.
        dropout: dropout probability on the attention weights (use only in training).

    Returns:
        o: (B, H, L, Dv). A query that sees no key at all gets zeros.
    """
    check_qkv(q, k, v)
    if window is not None:
        check_int(window, "window")
    B, H, L, D = q.shape
    S = k.shape[2]
    if alibi_slopes is not None and tuple(alibi_slopes.shape) != (H,):
        raise ValueError(f"alibi_slopes must have shape (heads,) = {(H,)}, "
                         f"got {tuple(alibi_slopes.shape)}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    key_or_full = _check_mask(mask, q, k)
    if window is not None and L == S and L > 2 * window and (mask is None or mask.dim() == 2):
        key_mask = None if mask is None else mask
        return _blocked_local(q, k, v, causal, window, key_mask, scale, alibi_slopes, dropout)

    if key_or_full is None and window is None and alibi_slopes is None:
        # The fastest exact paths torch offers: no mask at all, or its own causal kernel
        # (top-left aligned, as here), never a materialized L x S mask.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal,
                                              scale=scale)
    allowed = _structure_mask(L, S, causal, window, q.device)
    if key_or_full is not None:
        allowed = key_or_full if allowed is None else allowed & key_or_full
    if allowed is None:
        allowed = torch.ones(1, 1, L, S, dtype=torch.bool, device=q.device)
    # left as broadcast: a key mask stays (B, 1, 1, S), and so do the steps below
    seen = allowed.any(-1, keepdim=True)
    # A row with no visible key would be NaN; let it attend anywhere and zero it below.
    attn_mask = allowed | ~seen  # boolean: True = attend
    if alibi_slopes is not None:
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~attn_mask, float("-inf")) + _alibi_bias(alibi_slopes, L, S, causal, q.device,
                                                     q.dtype)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout,
                                       scale=scale)
    return o * seen.to(o.dtype)


def _blocked_local(q, k, v, causal, window, key_mask, scale, alibi_slopes, dropout):
    """Sliding-window attention in blocks of ``window`` queries, each seeing 3 (or 2) blocks."""
    B, H, L, D = q.shape
    w = window
    n = -(-L // w)
    pad = n * w - L
    # Keys get one block of padding on each side so every query block has a left/right block.
    qb = F.pad(q, (0, 0, 0, pad)).view(B, H, n, w, D)
    kp = F.pad(k, (0, 0, w, pad + w))
    vp = F.pad(v, (0, 0, w, pad + w))
    spans = 2 if causal else 3
    kb = torch.cat([kp[:, :, s * w:(s + n) * w].view(B, H, n, w, D) for s in range(spans)], 3)
    vb = torch.cat([vp[:, :, s * w:(s + n) * w].view(B, H, n, w, -1) for s in range(spans)], 3)
    qpos = torch.arange(n * w, device=q.device).view(n, w, 1)
    kpos = (torch.arange(n, device=q.device).view(n, 1, 1) - 1) * w + torch.arange(
        spans * w, device=q.device).view(1, 1, -1)
    allowed = ((qpos - kpos).abs() < w) & (kpos >= 0) & (kpos < L)
    if causal:
        allowed = allowed & (kpos <= qpos)
    allowed = allowed.expand(B, 1, n, w, spans * w)
    if key_mask is not None:
        km = F.pad(key_mask, (w, pad + w), value=False)
        kmb = torch.cat([km[:, s * w:(s + n) * w].view(B, n, w) for s in range(spans)], 2)
        allowed = allowed & kmb[:, None, :, None, :]
    scores = (qb @ kb.transpose(-1, -2)) * scale  # (B, H, n, w, spans*w)
    if alibi_slopes is not None:
        distance = (qpos - kpos).abs().to(scores.dtype)
        scores = scores - alibi_slopes.to(scores)[:, None, None, None] * distance
    scores = scores.masked_fill(~allowed, float("-inf"))
    seen = allowed.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~seen, 0.0), dim=-1) * seen
    if dropout > 0:
        probs = F.dropout(probs, p=dropout)
    o = (probs @ vb).reshape(B, H, n * w, -1)
    return o[:, :, :L]


def clipped_softmax_attention(q, k, v, *, gamma: float, zeta: float = 1.0, causal=False,
                              mask=None, scale=None):
    """Attention with the clipped softmax of Bondarenko et al. 2023 ("Quantizable
    Transformers: Removing Outliers by Helping Attention Heads Do Nothing"):
    clip((zeta - gamma) * softmax(scores) + gamma, 0, 1). With gamma < 0 a head can give a
    key exactly zero weight from a finite score, so it need not grow huge logits (and the
    activation outliers behind them) to attend to nothing. gamma = 0, zeta = 1 is softmax.

    Args:
        q: (B, H, L, D).  k: (B, H, S, D).  v: (B, H, S, Dv).
        gamma: lower stretch, <= 0.  zeta: upper stretch, >= 1.
        causal, mask, scale: as in ``softmax_attention``.

    Returns:
        (B, H, L, Dv).
    """
    check_qkv(q, k, v)
    if not gamma <= 0.0 or not zeta >= 1.0:
        raise ValueError(f"clipped softmax needs gamma <= 0 and zeta >= 1, got gamma={gamma!r}, "
                         f"zeta={zeta!r}")
    L, S = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = _structure_mask(L, S, causal, None, q.device)
    key_or_full = _check_mask(mask, q, k)
    if key_or_full is not None:
        allowed = key_or_full if allowed is None else allowed & key_or_full
    weights = masked_softmax((q @ k.transpose(-1, -2)) * scale, allowed)
    weights = ((zeta - gamma) * weights + gamma).clamp(0.0, 1.0)
    if allowed is not None:  # a key the query may not see stays at exactly zero
        weights = weights * allowed
    return weights @ v


def masked_softmax(scores, allowed=None, *, return_lse=False):
    """Softmax over the last dimension restricted to ``allowed`` entries (bool, broadcastable
    to ``scores``; None = all). A row with no allowed entry gets all-zero weights, so a query
    that sees no key reads nothing. With ``return_lse`` also returns the row's log-sum-exp of
    the allowed scores (-inf for an empty row), the normalizer ``merge_partial_attention``
    needs.
    """
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num()
    if return_lse:
        return weights, torch.logsumexp(scores, dim=-1)
    return weights


def merge_partial_attention(outputs, lses):
    """Combine attention computed over parts of the keys into attention over their union.

    Each part gives outputs (..., D) normalized over its own keys and their log-sum-exp
    (...,); weighting each part by its share of the total normalizer, softmax over the
    parts' lses, gives softmax attention over all the keys (a key in several parts counts
    once per part). Positions no part covers (all lses -inf) get zeros.
    """
    weights = torch.softmax(torch.stack(lses), dim=0).nan_to_num()[..., None]
    return (weights * torch.stack(outputs)).sum(0)


def score_attention(scores, v, *, causal=False, mask=None):
    """Softmax attention from given scores (Synthesizer's synthetic attention, Tay et al.
    2021): softmax(scores) V over the allowed keys.

    Args:
        scores: (B, H, L, S).  v: (B, H, S, Dv).
        causal: query i sees keys j <= i.  mask: optional (B, S) bool key mask.

    Returns:
        (B, H, L, Dv); a query with no visible key reads zeros.
    """
    B, H, L, S = scores.shape
    allowed = torch.ones(L, S, dtype=torch.bool, device=scores.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None].expand(B, 1, L, S)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    return masked_softmax(scores, allowed) @ v


def decode_attention(q, keys, values, *, alibi_slopes=None):
    """The recurrent form of causal softmax attention: the newest query (B, H, 1, D) against
    every cached key and value (B, H, T, D), the query's own included (the last one)."""
    scores = (q @ keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, 1, T)
    if alibi_slopes is not None:
        T = keys.shape[2]
        distance = torch.arange(T - 1, -1, -1, device=q.device, dtype=q.dtype)
        scores = scores - alibi_slopes.to(q.dtype)[:, None, None] * distance
    return torch.softmax(scores, dim=-1) @ values
