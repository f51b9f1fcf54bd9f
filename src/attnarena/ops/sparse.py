"""Fixed sparsity patterns over softmax attention: the Sparse Transformer (Child et al.
2019, "Generating Long Sequences with Sparse Transformers"), Longformer (Beltagy et al.
2020, "Longformer: The Long-Document Transformer") and BigBird (Zaheer et al. 2020, "Big
Bird: Transformers for Longer Sequences"). Each pattern is an (L, L) bool matrix, True
where query i may attend to key j; ``pattern_attention`` runs softmax attention under one.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from attnarena._validate import check_int
from attnarena.ops._checks import check_key_mask, check_qkv, tracing
from attnarena.ops.softmax import merge_partial_attention, softmax_attention


def strided_pattern(L, block, device=None):
    """The strided Sparse Transformer pattern: the previous ``block`` positions and every
    ``block``-th one before them (mirrored, so noncausal use sees both sides)."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    return ((i - j).abs() < block) | ((i - j) % block == 0)


def fixed_pattern(L, block, summary, device=None):
    """The fixed Sparse Transformer pattern: positions in the same block of ``block``
    tokens, and the last ``summary`` positions of every block."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    return (i // block == j // block) | (j % block >= block - summary)


def longformer_pattern(L, window, global_tokens, device=None):
    """Longformer: a sliding window of ``window`` keys centred on each query, plus
    ``global_tokens`` leading positions that attend to and are attended by every position."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    g = global_tokens
    return ((i - j).abs() <= window // 2) | (i < g) | (j < g)


def bigbird_blocks(n, global_blocks, random_blocks, seed):
    """(n, n) bool over blocks: each block sees its own and the two neighbouring blocks,
    the ``global_blocks`` leading blocks (which see everything), and ``random_blocks``
    random blocks drawn from ``seed`` and n (fixed for a given length)."""
    return _bigbird_blocks(n, global_blocks, random_blocks, seed).clone()


@functools.lru_cache(maxsize=64)
def _bigbird_blocks(n, global_blocks, random_blocks, seed):
    """The pattern of ``bigbird_blocks``, drawn once per configuration (a loop of n random
    permutations: thousands at 64K tokens), read-only."""
    bi = torch.arange(n, device="cpu")[:, None]  # cached: never on a caller's context device
    bj = torch.arange(n, device="cpu")[None, :]
    allowed = ((bi - bj).abs() <= 1) | (bi < global_blocks) | (bj < global_blocks)
    generator = torch.Generator().manual_seed(seed * 100_003 + n)
    for row in range(n):
        picks = torch.randperm(n, generator=generator)[:random_blocks]
        allowed[row, picks] = True
    return allowed


def bigbird_pattern(L, block, global_blocks, random_blocks, seed, device=None):
    """BigBird's block pattern (``bigbird_blocks``) spread over tokens in blocks of
    ``block``."""
    n = -(-L // block)
    blocks = torch.arange(L) // block
    allowed = _bigbird_blocks(n, global_blocks, random_blocks, seed)
    return allowed[blocks[:, None], blocks[None, :]].to(device)


def pattern_attention(q, k, v, pattern, *, causal=False, mask=None, alibi_slopes=None,
                      dropout=0.0):
    """Softmax attention restricted to ``pattern`` (L, L) bool (and to keys j <= i when
    causal, and to real keys under the (B, L) bool ``mask``). q, k, v: (B, H, L, D)."""
    check_qkv(q, k, v, same_length=True)
    check_key_mask(mask, q, k)
    L = q.shape[2]
    if tuple(pattern.shape) != (L, L) or pattern.dtype != torch.bool:
        raise ValueError(f"pattern must be an (L, L) = {(L, L)} bool tensor, got "
                         f"{tuple(pattern.shape)} {pattern.dtype}")
    allowed = pattern[None, None]  # (1, 1, L, L)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    return softmax_attention(q, k, v, mask=allowed, alibi_slopes=alibi_slopes, dropout=dropout)


# -- Block-sparse kernels ----------------------------------------------------------------------
# Each pattern is the union of a few parts that can be computed without touching the keys
# outside it (a band, the own block, a fixed set of keys, the keys of one residue class);
# each part gives outputs and log-sum-exps over its keys, and ``merge_partial_attention``
# turns them into softmax attention over the union. Parts never share a key (overlaps are
# masked out of one of them), so the result equals the dense masked reference. Rows that
# see every key (global tokens) are computed densely and written over.

_QUERY_CHUNK = 1024  # queries per step of a key-set part, so memory stays linear in L
_FIXED_CHUNK = 256  # queries (whole blocks) per fused call of the fixed pattern


class _Sparse:
    """Shared state of one block-sparse call: inputs, key mask, causality, ALiBi, dropout."""

    def __init__(self, q, k, v, causal, keep, alibi_slopes, dropout):
        self.q, self.k, self.v = q, k, v
        self.B, self.H, self.L, self.D = q.shape
        self.scale = 1.0 / math.sqrt(self.D)
        self.causal, self.keep = causal, keep
        self.slopes = None if alibi_slopes is None else alibi_slopes.to(q)
        self.dropout = dropout

    def attend(self, qs, ks, vs, qpos, kpos, allowed=None, padded=True):
        """Softmax over gathered keys: qs (B, H, *, Q, D), ks/vs (B, H, *, K, D), positions
        qpos (*, Q), kpos (*, K) (ints; >= L marks padding, which ``padded`` says may
        occur), allowed (None: all) broadcastable to (B, H, *, Q, K) -> (o, lse). A row
        with no allowed key reads zeros and has lse -inf.

        Without gradients (inference) torch's fused CPU attention kernel computes both in
        blocks, never holding the (Q, K) scores; otherwise torch's fused softmax gives the
        weights and the log-sum-exp follows from the weight of the row's largest score
        (lse = s_max - log p_max, and p_max >= 1 / K keeps the log exact)."""
        qp, kp = qpos[..., :, None], kpos[..., None, :]
        if padded:
            allowed = _both(allowed, kp < self.L)
        if self.causal:
            allowed = _both(allowed, kp <= qp)
        if self.keep is not None:
            real = F.pad(self.keep, (0, 1), value=False)  # index L: padding
            allowed = _both(allowed, _gather_keep(real, kpos, qs.dim()))
        bias = None
        if self.slopes is not None:
            distance = (qp - kp).abs().to(qs.dtype)
            bias = -self.slopes.view((1, self.H) + (1,) * (qs.dim() - 2)) * distance
        if self.dropout == 0 and _fused_available(qs, ks, vs):
            return self._fused(qs, ks, vs, allowed, bias)
        scores = (qs * self.scale) @ ks.transpose(-1, -2)
        if bias is not None:
            scores = scores + bias
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        top = scores.detach().argmax(-1, keepdim=True)
        lse = (scores.gather(-1, top) - weights.gather(-1, top).log()).squeeze(-1)
        if allowed is not None:  # rows with no allowed key: nan -> zero weights, lse -inf
            weights, lse = weights.nan_to_num(), lse.nan_to_num(nan=float("-inf"))
        if self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        return weights @ vs, lse

    def _fused(self, qs, ks, vs, allowed, bias):
        """``attend`` by the fused kernel: the leading dimensions fold into (B, H * ...);
        the mask, when there is one, becomes an additive bias of that shape."""
        lead = qs.shape[:-2]
        Q, K = qs.shape[-2], ks.shape[-2]
        B = lead[0]
        q4, k4, v4 = (t.reshape(B, -1, t.shape[-2], t.shape[-1]) for t in (qs, ks, vs))
        mask = None
        if allowed is not None or bias is not None:
            mask = torch.zeros((), dtype=qs.dtype, device=qs.device) if bias is None else bias
            if allowed is not None:
                mask = mask.masked_fill(~allowed, float("-inf"))
            mask = mask.expand(*lead, Q, K).reshape(B, -1, Q, K)
        o, lse = _FUSED(q4, k4, v4, 0.0, False, attn_mask=mask, scale=self.scale)
        lse = lse.reshape(*lead, Q)
        if allowed is not None:  # the kernel gives empty rows lse 0; they have none
            empty = ~allowed.any(-1)
            lse = lse.masked_fill(empty, float("-inf")) if tracing() or bool(empty.any()) else lse
        return o.reshape(*lead, Q, o.shape[-1]), lse

    def exact(self, qs, ks, vs, qpos, kpos, allowed):
        """Softmax over gathered keys by torch's fused SDPA (no lse, so for patterns that
        need no merging): qs (B, H, Q, D), ks/vs (B, H, K, D), positions qpos (Q,) and
        kpos (K,) < L, allowed (Q, K) -> (B, H, Q, D). A row with no allowed key reads
        zeros (SDPA is given all its keys and the row is cleared after)."""
        if self.causal:
            allowed = allowed & (kpos[None, :] <= qpos[:, None])
        if self.keep is not None:
            allowed = allowed & self.keep[:, None, None, kpos]  # (B, 1, Q, K)
        empty = ~allowed.any(-1, keepdim=True)
        has_empty = bool(empty.any())
        if has_empty:
            allowed = allowed | empty
        bias = allowed
        if self.slopes is not None:
            distance = (qpos[:, None] - kpos[None, :]).abs().to(qs.dtype)
            bias = (-self.slopes.view(1, self.H, 1, 1) * distance).masked_fill(
                ~allowed, float("-inf"))
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=bias,
                                           dropout_p=self.dropout, scale=self.scale)
        if has_empty:
            o = o.masked_fill(empty, 0.0)  # (Q, 1) or (B, 1, Q, 1)
        return o

    def blocks(self, t, b):
        """(B, H, L, D) -> (B, H, n, b, D), padded to n * b positions."""
        n = -(-self.L // b)
        return F.pad(t, (0, 0, 0, n * b - self.L)).view(self.B, self.H, n, b, t.shape[-1])

    def unblock(self, o, lse):
        """(B, H, n, b, D), (B, H, n, b) -> (B, H, L, D), (B, H, L)."""
        o = o.reshape(self.B, self.H, -1, o.shape[-1])[:, :, :self.L]
        return o, lse.reshape(self.B, self.H, -1)[:, :, :self.L]

    def band(self, w, exclude=None):
        """Keys with |i - j| < w: query blocks of w see their own and the neighbouring
        blocks (the left one only when causal)."""
        n = -(-self.L // w)
        spans = 2 if self.causal else 3
        qb = self.blocks(self.q, w)
        kp = F.pad(self.k, (0, 0, w, (n + 2) * w - self.L - w))
        vp = F.pad(self.v, (0, 0, w, (n + 2) * w - self.L - w))
        kb = torch.cat([kp[:, :, s * w:(s + n) * w].view(self.B, self.H, n, w, -1)
                        for s in range(spans)], 3)
        vb = torch.cat([vp[:, :, s * w:(s + n) * w].view(self.B, self.H, n, w, -1)
                        for s in range(spans)], 3)
        device = self.q.device
        qpos = torch.arange(n * w, device=device).view(n, w)
        kpos = (torch.arange(n, device=device)[:, None] - 1) * w + torch.arange(
            spans * w, device=device)[None, :]
        allowed = ((qpos[:, :, None] - kpos[:, None, :]).abs() < w) & (kpos[:, None, :] >= 0)
        if exclude is not None:
            allowed = allowed & ~exclude(qpos[:, :, None], kpos[:, None, :])
        kpos = torch.where(kpos < 0, self.L, kpos)
        return self.unblock(*self.attend(qb, kb, vb, qpos, kpos, allowed))

    def own_block(self, b, skip=0):
        """Keys in the query's own block of b tokens, less the last ``skip`` of each block."""
        n = -(-self.L // b)
        pos = torch.arange(n * b, device=self.q.device).view(n, b)
        allowed = None
        if skip:
            allowed = torch.arange(b, device=self.q.device) < b - skip
        return self.unblock(*self.attend(self.blocks(self.q, b), self.blocks(self.k, b),
                                         self.blocks(self.v, b), pos, pos, allowed,
                                         padded=self.L % b != 0))

    def key_set(self, index, exclude=None):
        """Every query against the keys at positions ``index`` (K,), in chunks of queries."""
        ks, vs = self.k[:, :, index], self.v[:, :, index]
        outs, lses = [], []
        for start in range(0, self.L, _QUERY_CHUNK):
            stop = min(self.L, start + _QUERY_CHUNK)
            qpos = torch.arange(start, stop, device=self.q.device)
            allowed = None if exclude is None else ~exclude(qpos[:, None], index[None, :])
            o, lse = self.attend(self.q[:, :, start:stop], ks, vs, qpos, index, allowed,
                                 padded=False)
            outs.append(o)
            lses.append(lse)
        return torch.cat(outs, 2), torch.cat(lses, 2)

    def residue(self, b):
        """Keys j with j = i (mod b): queries and keys regrouped by residue."""
        n = -(-self.L // b)

        def by_residue(t):
            return self.blocks(t, b).transpose(2, 3)  # (B, H, b, n, D)

        pos = (torch.arange(n, device=self.q.device)[None, :] * b
               + torch.arange(b, device=self.q.device)[:, None])  # (b, n)
        o, lse = self.attend(by_residue(self.q), by_residue(self.k), by_residue(self.v), pos,
                             pos, padded=self.L % b != 0)
        o = o.transpose(2, 3).reshape(self.B, self.H, n * b, -1)[:, :, :self.L]
        return o, lse.transpose(2, 3).reshape(self.B, self.H, n * b)[:, :, :self.L]

    def gathered_blocks(self, b, rows, cols, valid):
        """Query blocks ``rows`` (R,) against key blocks ``cols`` (R, M) where ``valid``."""
        qb = self.blocks(self.q, b)[:, :, rows]  # (B, H, R, b, D)
        kb = self.blocks(self.k, b)[:, :, cols].flatten(3, 4)  # (B, H, R, M * b, D)
        vb = self.blocks(self.v, b)[:, :, cols].flatten(3, 4)
        offsets = torch.arange(b, device=self.q.device)
        qpos = rows[:, None] * b + offsets
        kpos = (cols[:, :, None] * b + offsets).flatten(1)
        allowed = valid[:, :, None].expand(-1, -1, b).flatten(1)[:, None, :]
        return self.attend(qb, kb, vb, qpos, kpos, allowed, padded=self.L % b != 0)

    def dense_rows(self, rows):
        """Queries at ``rows`` against every key."""
        kpos = torch.arange(self.L, device=self.q.device)
        return self.attend(self.q[:, :, rows], self.k, self.v, rows, kpos, padded=False)


_FUSED = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _fused_available(*tensors) -> bool:
    """The fused CPU kernel that also returns the log-sum-exp serves calls that need no
    gradient (it gives none for the log-sum-exp) on CPU float tensors."""
    return (_FUSED is not None and not (torch.is_grad_enabled()
                                        and any(t.requires_grad for t in tensors))
            and all(t.device.type == "cpu" for t in tensors)
            and tensors[0].dtype in (torch.float32, torch.float64))


def _both(allowed, more):
    return more if allowed is None else allowed & more


def _gather_keep(real, kpos, dims):
    """The key mask (B, L + 1) at positions ``kpos`` (*, K), shaped to broadcast against
    allowed masks of ``dims`` dimensions (B, H, *, Q, K)."""
    picked = real[:, kpos.clamp(max=real.shape[1] - 1)]  # (B, *, K)
    picked = picked.unsqueeze(1).unsqueeze(-2)  # (B, 1, *, 1, K)
    while picked.dim() < dims:
        picked = picked.unsqueeze(1)
    return picked


def _start(q, k, v, mask, causal, alibi_slopes, dropout):
    check_qkv(q, k, v, same_length=True)
    check_key_mask(mask, q, k)
    return _Sparse(q, k, v, causal, mask, alibi_slopes, dropout)


def strided_attention(q, k, v, block, *, causal=False, mask=None, alibi_slopes=None,
                      dropout=0.0):
    """``strided_pattern`` attention in O(L (block + L / block) D): a band of the
    neighbouring ``block`` positions (less the query's own) plus the keys of the query's
    residue class."""
    check_int(block, "block")
    s = _start(q, k, v, mask, causal, alibi_slopes, dropout)
    band, stride = s.band(block, exclude=lambda i, j: i == j), s.residue(block)
    return merge_partial_attention([band[0], stride[0]], [band[1], stride[1]])


def fixed_attention(q, k, v, block, summary, *, causal=False, mask=None, alibi_slopes=None,
                    dropout=0.0):
    """``fixed_pattern`` attention in O(L (block + L summary / block) D): every query block
    sees the same keys (all summary positions) plus its own block's other positions.
    Without gradients the two parts are computed apart and merged; with them a chunk of
    whole blocks is one fused SDPA call over both, masked to the query's own block."""
    check_int(block, "block")
    check_int(summary, "summary")
    s = _start(q, k, v, mask, causal, alibi_slopes, dropout)
    positions = torch.arange(s.L, device=q.device)
    is_summary = positions % block >= block - summary
    shared = positions[is_summary]
    if dropout == 0 and _fused_available(q, k, v):  # the kernel gives the parts' lses
        own = s.own_block(block, skip=summary)
        if shared.numel() == 0:
            return own[0]
        rest = s.key_set(shared)
        return merge_partial_attention([own[0], rest[0]], [own[1], rest[1]])
    k_shared, v_shared = k[:, :, shared], v[:, :, shared]
    step = block * max(1, _FIXED_CHUNK // block)
    outputs = []
    for start in range(0, s.L, step):
        qpos = positions[start:start + step]
        own = qpos[~is_summary[start:start + step]]
        kpos = torch.cat([shared, own])
        allowed = torch.cat([torch.ones(qpos.shape[0], shared.shape[0], dtype=torch.bool,
                                        device=q.device),
                             qpos[:, None] // block == own[None, :] // block], 1)
        outputs.append(s.exact(q[:, :, start:start + step],
                               torch.cat([k_shared, k[:, :, own]], 2),
                               torch.cat([v_shared, v[:, :, own]], 2), qpos, kpos, allowed))
    return torch.cat(outputs, 2)


def longformer_attention(q, k, v, window, global_tokens, *, mask=None, alibi_slopes=None,
                         dropout=0.0):
    """``longformer_pattern`` attention (noncausal) in O(L (window + global_tokens) D): a
    band of half-width window // 2, the global keys, and the global queries densely."""
    check_int(window, "window")
    check_int(global_tokens, "global_tokens", minimum=0)
    s = _start(q, k, v, mask, False, alibi_slopes, dropout)
    half = window // 2
    parts = [s.band(half + 1)]
    g = min(global_tokens, s.L)
    if g:
        parts.append(s.key_set(torch.arange(g, device=q.device),
                               exclude=lambda i, j: (i - j).abs() <= half))
    o = merge_partial_attention([p[0] for p in parts], [p[1] for p in parts])
    if g:
        o[:, :, :g] = s.dense_rows(torch.arange(g, device=q.device))[0]
    return o


def bigbird_attention(q, k, v, block, global_blocks, random_blocks, seed, *, mask=None,
                      alibi_slopes=None, dropout=0.0):
    """``bigbird_pattern`` attention (noncausal) in O(L (3 + G + R) block D): each
    non-global query block against its gathered key blocks, global query blocks densely."""
    check_int(block, "block")
    s = _start(q, k, v, mask, False, alibi_slopes, dropout)
    n = -(-s.L // block)
    allowed = _bigbird_blocks(n, global_blocks, random_blocks, seed).to(q.device)
    dense = allowed.all(1)  # rows that see every block: the global ones
    rows = (~dense).nonzero()[:, 0]
    o = q.new_zeros(s.B, s.H, n, block, s.D)
    if rows.numel():
        picked = allowed[rows]  # (R, n)
        width = int(picked.sum(1).max())
        order = picked.to(torch.int8).argsort(dim=1, descending=True, stable=True)
        cols = order[:, :width]  # the allowed blocks first, in ascending order
        valid = picked.gather(1, cols)
        o[:, :, rows] = s.gathered_blocks(block, rows, cols, valid)[0]
    o = o.reshape(s.B, s.H, n * block, s.D)[:, :, :s.L]
    if tracing() or bool(dense.any()):
        positions = torch.arange(s.L, device=q.device)
        global_rows = positions[dense[positions // block]]
        o[:, :, global_rows] = s.dense_rows(global_rows)[0]
    return o
