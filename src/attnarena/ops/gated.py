"""Linear attention with decay: a state S (Dk, Dv) that is decayed, then written, per token.

    S_t = diag(a_t) S_{t-1} + k_t v_t^T ,   o_t = S_t^T q_t ,   a_t = exp(log_a_t) in (0, 1]

- ``retention`` (Sun et al. 2023, "Retentive Network"): one fixed decay per head.
- ``gla`` (Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient
  Training"): a data-dependent decay per token and key channel.
- ``scalar_gated``: a data-dependent decay per token shared by a head's channels (the core
  of Mamba-2's state space duality).

Forms: ``recurrent`` (the reference loop), ``chunk`` (chunkwise: quadratic inside chunks of
C tokens, the state carried across them) and ``parallel`` (one chunk spanning the whole
sequence). Decays between positions j <= i enter as exp of the log decays summed over
(j, i], an exponent <= 0, so nothing overflows however strong the decay; the sums are
formed over each span, not as differences of long prefix sums, so they stay accurate.
Per-channel gates inside a chunk factor as exp(P_i) exp(-P_j) (one matmul) while the
chunk's total decay stays above exp(-30); the chunks that decay more are redone with the
pairwise decays formed one key position at a time (exact for any decay, slower).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena._validate import entering
from attnarena.ops._blocks import in_blocks
from attnarena.ops._checks import (check_chunk_size, check_form, check_qkv, check_state,
                                   compute_dtype, tracing)

# Largest total log decay inside one chunk for which per-channel gates are factored:
# exp(30) ~ 1e13 keeps every factor and product well inside float32's range.
FACTOR_LIMIT = 30.0


def check_log_decay(log_decay, shape, name):
    if not isinstance(log_decay, torch.Tensor) or not log_decay.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{getattr(log_decay, 'dtype', type(log_decay).__name__)}")
    if tuple(log_decay.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(log_decay.shape)}")
    if not entering():  # a caller inside the package made the values
        return
    if torch.isnan(log_decay).any():
        raise ValueError(f"{name} contains NaN")
    if (log_decay > 0).any():
        raise ValueError(f"{name} must be <= 0 (a decay exp({name}) in (0, 1]); "
                         f"got a maximum of {float(log_decay.max()):.4g}")


def _prepare(q, k, v, initial_state, form, chunk_size):
    check_qkv(q, k, v, same_length=True)
    check_form(form)
    check_chunk_size(chunk_size)
    B, H, L, Dk = q.shape
    if initial_state is not None:
        check_state(initial_state, (B, H, Dk, v.shape[-1]))
    dtype = compute_dtype(q.dtype)
    state = None if initial_state is None else initial_state.to(dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype), state


def retention(q, k, v, *, log_decay, form="chunk", chunk_size=64, initial_state=None,
              return_state=False):
    """Retention: S_t = exp(log_decay) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t.

    Args:
        q, k: (B, H, L, Dk).  v: (B, H, L, Dv).
        log_decay: (H,) per-head log decay, <= 0.
        form, chunk_size, initial_state (B, H, Dk, Dv), return_state: as in linear_attention.

    Returns:
        o (B, H, L, Dv) in the dtype of q, or (o, state) with ``return_state``.
    """
    check_qkv(q, k, v, same_length=True)
    B, H, L, _ = q.shape
    check_log_decay(log_decay, (H,), "log_decay")
    log_a = log_decay.reshape(1, H, 1).expand(B, H, L)
    return scalar_gated(q, k, v, log_a=log_a, form=form, chunk_size=chunk_size,
                        initial_state=initial_state, return_state=return_state)


def scalar_gated(q, k, v, *, log_a, form="chunk", chunk_size=64, initial_state=None,
                 return_state=False):
    """S_t = exp(log_a_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, with log_a: (B, H, L) <= 0.

    Other arguments and the return value as in ``retention``.
    """
    out_dtype = q.dtype
    q, k, v, state = _prepare(q, k, v, initial_state, form, chunk_size)
    B, H, L, _ = q.shape
    check_log_decay(log_a, (B, H, L), "log_a")
    log_a = log_a.to(q.dtype)
    if form == "recurrent":
        o, state = _recurrent(q, k, v, log_a[..., None], state)
    else:
        o, state = _chunk_form(q, k, v, log_a, state, form, chunk_size, per_channel=False)
    o = o.to(out_dtype)
    return (o, state) if return_state else o


def gla(q, k, v, *, log_g, form="chunk", chunk_size=64, initial_state=None, return_state=False):
    """Gated linear attention: S_t = diag(exp(log_g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t.

    Args:
        q, k: (B, H, L, Dk).  v: (B, H, L, Dv).
        log_g: (B, H, L, Dk) log gates, <= 0.
        form, chunk_size, initial_state (B, H, Dk, Dv), return_state: as in linear_attention.

    Returns:
        o (B, H, L, Dv) in the dtype of q, or (o, state) with ``return_state``.
    """
    out_dtype = q.dtype
    q, k, v, state = _prepare(q, k, v, initial_state, form, chunk_size)
    check_log_decay(log_g, q.shape, "log_g")
    log_g = log_g.to(q.dtype)
    if form == "recurrent":
        o, state = _recurrent(q, k, v, log_g, state)
    elif tracing():  # a graph: chunks of one size at every length, no loop to unroll
        o, state = _traced_chunks(q, k, v, log_g, state, min(chunk_size, GRAPH_CHUNK))
    else:
        o, state = _chunk_form(q, k, v, log_g, state, form, chunk_size, per_channel=True)
    o = o.to(out_dtype)
    return (o, state) if return_state else o


def gla_step(q, k, v, *, log_g, state):
    """One token of gated linear attention, for decoding: S = diag(exp(log_g)) S + k v^T,
    o = S^T q (the reference's step, without its loop over a sequence).

    Args:
        q, k, log_g: (B, H, Dk); v: (B, H, Dv); state: (B, H, Dk, Dv) in the dtype the
            update runs in (float32 for half-precision inputs).

    Returns:
        (o (B, H, Dv) in the dtype of q, the new state).
    """
    dtype = state.dtype
    k, v = k.to(dtype), v.to(dtype)
    state = torch.addcmul(log_g.to(dtype).exp()[..., None] * state, k[..., None],
                          v[..., None, :])
    o = (q.to(dtype)[..., None, :] @ state)[..., 0, :]
    return o.to(q.dtype), state


def _recurrent(q, k, v, log_a, state):
    """The reference: one token at a time. log_a: (B, H, L, Dk or 1)."""
    B, H, L, Dk = q.shape
    if state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    decay = log_a.exp()
    outputs = []
    for t in range(L):
        state = decay[:, :, t, :, None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append((q[:, :, t, None, :] @ state)[:, :, 0])
    return torch.stack(outputs, dim=2), state


def _chunk_form(q, k, v, log_a, state, form, chunk_size, per_channel):
    """The parallel form (one chunk, never cut into blocks) or the chunk form (in blocks
    without gradients); a sequence shorter than a chunk is one unpadded chunk."""
    L = q.shape[2]
    C = L if form == "parallel" else min(chunk_size, L)
    return in_blocks(lambda parts, S: _chunked(*parts, S, C, per_channel), (q, k, v, log_a),
                     state, C)


def _chunked(q, k, v, log_a, state, C, per_channel):
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    pad = (-L) % C
    if pad:  # padded steps: no decay, nothing written, nothing read
        q, k, v, log_a = (F.pad(t, (0, 0, 0, pad)) if t.dim() == 4 else F.pad(t, (0, pad))
                          for t in (q, k, v, log_a))
    n = (L + pad) // C
    qc, kc, vc = (t.reshape(B, H, n, C, -1) for t in (q, k, v))
    g = log_a.reshape(B, H, n, C, -1 if per_channel else 1)  # (B, H, n, C, Dk|1)
    prefix = g.cumsum(dim=3)  # log decay from the chunk start through each position
    total = prefix[:, :, :, -1:]  # (B, H, n, 1, Dk|1)
    q_from_start = qc * prefix.exp()  # every factor <= 1
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril().to(q.dtype)

    if not per_channel:
        decay = segment_sums(g[..., 0], dim=-1).exp()  # (B, H, n, C, C)
        scores = (qc @ kc.transpose(-1, -2)) * decay
        k_to_end = kc * suffix_sums(g, dim=3).exp()
    else:  # (a graph runs _traced_chunks instead: no branch on what the inputs decay)
        # exp(P_i - P_j) = exp(P_i) exp(-P_j): one matmul, safe in chunks that decay by no
        # more than exp(-30). The few chunks that do are redone pairwise.
        k_back = kc * (-prefix).clamp(max=FACTOR_LIMIT).exp()
        scores = (q_from_start @ k_back.transpose(-1, -2)) * causal
        k_to_end = k_back * total.exp()
        strong = (total < -FACTOR_LIMIT).any(dim=-1)[..., 0]  # (B, H, n)
        if bool(strong.any()):
            idx = strong.nonzero(as_tuple=True)
            scores[idx] = _pairwise_scores(qc[idx], kc[idx], g[idx]) * causal
            k_to_end[idx] = kc[idx] * suffix_sums(g[idx], dim=-2).exp()
    o = scores @ vc  # (B, H, n, C, Dv)

    # Carry the state across chunks: S <- exp(total) S + (k * exp(to_end))^T v.
    writes = k_to_end.transpose(-1, -2) @ vc  # (B, H, n, Dk, Dv)
    end_decay = total.transpose(-1, -2).exp()  # (B, H, n, Dk|1, 1)
    S = q.new_zeros(B, H, Dk, Dv) if state is None else state
    before = []
    # unbound once: indexing chunk i of the whole tensor would give each step's gradient a
    # zero-filled tensor as large as all the chunks in the backward pass
    for decay_i, write_i in zip(end_decay.unbind(2), writes.unbind(2)):
        before.append(S)
        S = decay_i * S + write_i
    o = o + q_from_start @ torch.stack(before, dim=2)
    return o.reshape(B, H, n * C, Dv)[:, :, :L], S


# The chunk a graph of gla runs (at most): its work grows as L C Dk elementwise (every
# chunk's pairwise decays per channel) plus (L / C)^2 Dk (the decays between chunks) and
# (L / C)^2 Dk Dv in products, so 16 balances the two near 4,096 tokens.
GRAPH_CHUNK = 16


def _traced_chunks(q, k, v, g, state, C):
    """The chunk form of per-channel gates as a graph holds it (ONNX export): the length
    padded to a multiple of C whatever it is, every chunk's decays formed pairwise (exact
    for any decay, as ``segment_sums``), and the state carried across chunks without a loop:
    the state after chunk i is sum over j <= i of exp(total decay of chunks j+1..i) times
    chunk j's writes, plus the initial state decayed by every chunk through i. Time and
    memory grow as L C Dk + (L / C)^2 Dk Dv, where the parallel form's grow as L^2 Dk."""
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    pad = (C - L % C) % C
    q, k, v, g = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v, g))
    n = (L + pad) // C
    qc, kc, vc, gc = (t.reshape(B, H, n, C, t.shape[-1]) for t in (q, k, v, g))
    prefix = gc.cumsum(dim=3)
    total = prefix[:, :, :, -1]  # (B, H, n, Dk): each chunk's log decay
    q_from_start = qc * prefix.exp()
    decay = _pairwise_decays(gc.transpose(-1, -2))  # (B, H, n, Dk, C, C)
    # products and a sum rather than an einsum of three: ONNX Runtime's Einsum is slow
    qt, kt = qc.transpose(-1, -2), kc.transpose(-1, -2)  # (B, H, n, Dk, C)
    scores = (qt[..., :, None] * decay * kt[..., None, :]).sum(dim=3)
    o = scores @ vc
    writes = (kc * suffix_sums(gc, dim=3).exp()).transpose(-1, -2) @ vc  # (B, H, n, Dk, Dv)
    between = _pairwise_decays(total.transpose(-1, -2))  # (B, H, Dk, n, n)
    after = (between @ writes.transpose(2, 3)).transpose(2, 3)  # the state after each chunk
    if state is not None:
        after = after + total.cumsum(dim=2).exp()[..., None] * state[:, :, None]
    else:
        state = q.new_zeros(B, H, Dk, Dv)
    before = torch.cat([state[:, :, None], after[:, :, :-1]], dim=2)
    o = o + q_from_start @ before
    return o.reshape(B, H, n * C, Dv)[:, :, :L], after[:, :, -1]


def _pairwise_decays(x):
    """exp(x[j+1] + ... + x[i]) for i >= j, 0 above, along the last dimension -> a new
    trailing (i, j) pair: ``segment_sums(x, -1).exp()`` with products by 0/1 masks where
    that has fills, which ONNX Runtime runs faster. Each exponent is summed over its own
    span, so it stays accurate however strong the decays."""
    n = x.shape[-1]
    ones = torch.ones(n, n, dtype=x.dtype, device=x.device)
    x = x.clamp(min=torch.finfo(x.dtype).min)  # a decay of exp(-inf) (a reset) times 0 is 0
    return (x[..., :, None] * ones.tril(-1)).cumsum(dim=-2).exp() * ones.tril()


def _pairwise_scores(qc, kc, g):
    """A_ij = sum_d q_id k_jd exp(g_(j+1)d + ... + g_id) for i >= j, one key position at a
    time, each exponent summed directly: exact for any decay. (..., C, D) -> (..., C, C)."""
    C = qc.shape[-2]
    scores = qc.new_zeros(*qc.shape[:-1], C)
    positions = torch.arange(C, device=qc.device)[:, None]
    for j in range(C):
        span = g.masked_fill(positions <= j, 0).cumsum(dim=-2)  # sums over (j, i]
        scores[..., j] = (qc * span.exp() * kc[..., j:j + 1, :]).sum(-1)
    return scores


def segment_sums(x, dim):
    """Sums over (j, i] for every i >= j along ``dim`` -> a new trailing (.., i, j) pair.

    out[..., i, j] = x[j+1] + ... + x[i]  (0 when i == j, -inf when i < j). Each entry is
    summed directly rather than as a difference of prefix sums, so it stays accurate when
    the prefix sums are large (strong decays over long spans).
    """
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    expanded = x[..., None, :].expand(*x.shape, n).transpose(-1, -2)  # [..., i, j] = x[i]
    strictly_lower = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)
    # one new tensor, then in place (autograd-safe: neither step's gradient reads values)
    sums = expanded.masked_fill(~strictly_lower, 0).cumsum_(dim=-2)
    lower = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    return sums.masked_fill_(~lower, float("-inf"))


def suffix_sums(x, dim):
    """out[j] = x[j+1] + ... + x[last] along ``dim`` (0 at the last position)."""
    rev = x.flip(dim).cumsum(dim).flip(dim)  # x[j] + ... + x[last]
    return torch.cat([rev.narrow(dim, 1, x.shape[dim] - 1),
                      torch.zeros_like(rev.narrow(dim, 0, 1))], dim=dim)
