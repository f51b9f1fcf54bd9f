"""Transformer-VQ's attention (Lingle 2023, "Transformer-VQ: Linear-Time Transformers via
Vector Quantization"): softmax attention over keys quantized to their nearest codeword,
k^_j = C_{z_j}. Keys outside the current block then differ only by their code, so their
part of the softmax is held by a compressive cache: per code, the sum of the values
assigned to it and their count, and

    o_t = (sum_{j in block} e^{q.k^_j} v_j + sum_s e^{q.C_s} U_s)
          / (sum_{j in block} e^{q.k^_j} + sum_s e^{q.C_s} n_s),

exactly softmax attention over the quantized keys, in O(L (W + S) D) for blocks of W and
S codes. Inside a block the quantized key is straight-through, k^ = k + sg(C_z - k), so
keys get gradients there, as in the paper. The parallel form is the dense reference over
quantized keys; the recurrent form (decoding) holds only the cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnarena._validate import check_int
from attnarena.ops._checks import check_key_mask, check_qkv, compute_dtype

VQ_FORMS = ("parallel", "chunk", "recurrent")


def quantize(k, codebook, straight_through=True):
    """Nearest codeword of each key: codes (B, H, L) and the quantized keys (B, H, L, D),
    straight-through (their gradient passed to the keys) unless told otherwise, for keys
    (B, H, L, D) and a codebook (H, S, D)."""
    distance = (k * k).sum(-1, keepdim=True) - 2 * k @ codebook.transpose(-1, -2).to(k.dtype) \
        + (codebook * codebook).sum(-1).to(k.dtype)[:, None]
    codes = distance.argmin(-1)
    chosen = torch.gather(codebook.to(k.dtype).expand(k.shape[0], -1, -1, -1), 2,
                          codes[..., None].expand(*codes.shape, k.shape[-1]))
    return codes, (k + (chosen - k).detach()) if straight_through else chosen


def vq_attention(q, k, v, *, codebook, causal, block=64, form="chunk", mask=None,
                 initial_state=None, return_state=False, straight_through=True):
    """Softmax attention over vector-quantized keys.

    Args:
        q, k: (B, H, L, D); v: (B, H, L, Dv).
        codebook: (H, S, D) codewords per head.
        causal: position t sees keys j <= t.
        block: W, tokens attended exactly (with straight-through keys) in the chunk form.
        form: "parallel" (dense reference), "chunk" (blocks and the compressive cache) or
            "recurrent" (the cache alone, token by token, causal).
        mask: (B, L) bool, True = real token; padded keys get no weight.
        straight_through: pass the quantized keys' gradient to the keys (a surrogate; False
            leaves the keys without one, the exact derivative of the quantization).
        initial_state, return_state: the recurrent form's cache (U (B, H, S, Dv), n (B, H,
            S)) to start from and to return (decoding).

    Returns:
        (B, H, L, Dv) in the dtype of q, or (o, cache) with ``return_state``.
    """
    check_qkv(q, k, v, same_length=True)
    check_int(block, "block")
    check_key_mask(mask, q, k)
    if form not in VQ_FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms: {', '.join(VQ_FORMS)}")
    if (initial_state is not None or return_state) and form != "recurrent":
        raise ValueError("only the recurrent form takes and returns a cache")
    if form == "recurrent" and not causal:
        raise ValueError("the recurrent form is causal: a token's cache holds the keys before "
                         "it")
    B, H, L, D = q.shape
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 3 \
            or codebook.shape[0] != H or codebook.shape[2] != D:
        raise ValueError(f"codebook must have shape (heads, codes, head_dim) = ({H}, S, {D}), "
                         f"got {tuple(getattr(codebook, 'shape', ()))}")
    out_dtype, dtype = q.dtype, compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    codes, k_hat = quantize(k, codebook, straight_through)
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if mask is None else mask
    q = q / math.sqrt(D)
    if form == "parallel":
        allowed = keep[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        scores = (q @ k_hat.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
        o = torch.nan_to_num(scores.softmax(-1)) @ v
        return o.to(out_dtype)
    S = codebook.shape[1]
    assigned = F.one_hot(codes, S).to(dtype) * keep[:, None, :, None].to(dtype)  # (B,H,L,S)
    code_scores = q @ codebook.to(dtype).transpose(-1, -2)  # (B, H, L, S)
    if form == "recurrent":  # every earlier key lives in the cache, the token's own too
        if initial_state is None:
            initial_state = (v.new_zeros(B, H, S, v.shape[-1]), v.new_zeros(B, H, S))
        o, cache = _cache_only(code_scores, assigned, v, *(c.to(dtype) for c in initial_state))
        return (o.to(out_dtype), cache) if return_state else o.to(out_dtype)
    return _blocks(q, k_hat, v, keep, assigned, code_scores, block, causal).to(out_dtype)


def _largest(scores, present):
    """The largest score among the present terms (-inf when none is)."""
    return scores.masked_fill(~present, float("-inf")).amax(-1, keepdim=True).detach()


def _finite(top):
    """Exponents are taken relative to the largest present score, so none overflows and
    the largest term is exp(0) = 1 (sums never underflow); 0 where nothing is present."""
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _cache_only(code_scores, assigned, v, U, n):
    outputs = []
    for t in range(v.shape[2]):
        U = U + assigned[:, :, t, :, None] * v[:, :, t, None, :]
        n = n + assigned[:, :, t]
        scores = code_scores[:, :, t]
        present = n > 0  # absent codes get weight 0 (never inf * 0)
        top = _finite(_largest(scores, present))
        w = (scores - top).masked_fill(~present, float("-inf")).exp()
        denominator = (w * n).sum(-1, keepdim=True)
        outputs.append((w[:, :, None] @ U)[:, :, 0] / denominator.clamp_min(1e-30))
    return torch.stack(outputs, 2), (U, n)


def _blocks(q, k_hat, v, keep, assigned, code_scores, W, causal):
    B, H, L, D = q.shape
    Dv, S = v.shape[-1], assigned.shape[-1]
    U = v.new_zeros(B, H, S, Dv)  # values summed per code over the blocks before
    n = v.new_zeros(B, H, S)
    if not causal:  # every block but the query's own, from the totals
        U_all = assigned.transpose(-1, -2) @ v
        n_all = assigned.sum(2)
    outputs = []
    # split once: a slice a step would give each its own full-size gradient (ops._blocks)
    for qb, kb, vb, ab, cb, kept in zip(*(t.split(W, dim=2) for t in (
            q, k_hat, v, assigned, code_scores)), keep.split(W, dim=1)):
        width = qb.shape[2]
        own_U, own_n = ab.transpose(-1, -2) @ vb, ab.sum(2)
        if not causal:
            U, n = U_all - own_U, n_all - own_n
        allowed = kept[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(width, width, dtype=torch.bool,
                                           device=q.device).tril()
        scores = (qb @ kb.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
        # the largest score among the keys each query sees, in the block or the cache
        present = (n > 0)[:, :, None].expand_as(cb)
        top = _finite(torch.maximum(_largest(scores, allowed.expand_as(scores)),
                                    _largest(cb, present)))
        inner = (scores - top).exp()
        cached = (cb - top).masked_fill(~present, float("-inf")).exp()  # absent codes: 0
        numerator = inner @ vb + cached @ U
        denominator = inner.sum(-1, keepdim=True) + (cached * n[:, :, None]).sum(-1,
                                                                                 keepdim=True)
        # a query that sees no key at all (padding) gets zeros
        outputs.append(numerator / denominator.clamp_min(1e-30))
        if causal:
            U, n = U + own_U, n + own_n
    return torch.cat(outputs, 2)
