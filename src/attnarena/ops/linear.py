"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention") in three forms that compute the same thing.

With feature-mapped queries and keys, causal linear attention is a recurrence over a
(Dk, Dv) state:  S_t = S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t  (divided by z_t^T q_t with
z_t = z_{t-1} + k_t when normalized).

- ``parallel``: the quadratic form (q k^T, lower-triangular when causal) v; the reference.
- ``chunk``: chunks of C tokens; quadratic inside a chunk, the state carried between
  chunks: O(L C D + L D^2) time.
- ``recurrent``: the state carried token by token, as in decoding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena.ops._blocks import in_blocks
from attnarena.ops._checks import (check_chunk_size, check_form, check_qkv, check_state,
                                   compute_dtype)


def linear_attention(q, k, v, *, causal, normalize=True, form="chunk", chunk_size=64,
                     initial_state=None, return_state=False, eps=1e-6):
    """Linear attention over already feature-mapped queries and keys.

    Args:
        q: (B, H, L, Dk) feature-mapped queries.
        k: (B, H, S, Dk) feature-mapped keys; with ``causal``, S == L.
        v: (B, H, S, Dv) values.
        causal: position t sees positions <= t.
        normalize: divide by the sum of similarities (needs non-negative features).
        form: "parallel", "chunk" or "recurrent"; all give the same result.
        chunk_size: chunk length C of the chunk form.
        initial_state: state of an earlier call, to continue a sequence. Shape (B, H, Dk, Dv),
            or (B, H, Dk, Dv + 1) when normalized (the last column is the running key sum).
        return_state: also return the state after the last position.
        eps: added to the normalizer.

    Returns:
        o: (B, H, L, Dv), in the dtype of q; with ``return_state``, (o, state). Half-precision
        inputs are computed, and their state returned, in float32.
    """
    check_qkv(q, k, v, same_length=causal)
    check_form(form)
    check_chunk_size(chunk_size)
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if initial_state is not None:
        check_state(initial_state, (B, H, Dk, v.shape[-1]))
        initial_state = initial_state.to(dtype)

    if form == "parallel":
        o, state = _parallel(q, k, v, causal, initial_state)
    elif form == "chunk" and causal:
        o, state = in_blocks(lambda parts, S: _chunk(*parts, True, S, chunk_size), (q, k, v),
                             initial_state, min(chunk_size, L))
    elif form == "chunk":
        o, state = _chunk(q, k, v, causal, initial_state, chunk_size)
    else:
        o, state = _recurrent(q, k, v, causal, initial_state)

    if normalize:
        o = o[..., :Dv] / (o[..., Dv:] + eps)
    o = o.to(out_dtype)
    return (o, state) if return_state else o


def linear_attention_step(q, k, v, *, state, normalize=True, eps=1e-6):
    """One token of causal linear attention, for decoding: S = S + k v^T, o = S^T q (and,
    normalized, divided by the running key sum's dot product with q), the recurrent
    form's step without its loop.

    Args:
        q, k: (B, H, Dk) feature-mapped; v: (B, H, Dv); state: (B, H, Dk, Dv), or
            (B, H, Dk, Dv + 1) when normalized (the last column the running key sum), in
            the dtype the update runs in (float32 for half-precision inputs).

    Returns:
        (o (B, H, Dv) in the dtype of q, the new state).
    """
    dtype = state.dtype
    k, v = k.to(dtype), v.to(dtype)
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    state = torch.addcmul(state, k[..., None], v[..., None, :])
    o = (q.to(dtype)[..., None, :] @ state)[..., 0, :]
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + eps)
    return o.to(q.dtype), state


def _parallel(q, k, v, causal, state):
    scores = q @ k.transpose(-1, -2)  # (B, H, L, S)
    if causal:
        scores = scores.tril()
    o = scores @ v
    final = k.transpose(-1, -2) @ v
    if state is not None:
        o = o + q @ state
        final = final + state
    return o, final


def _chunk(q, k, v, causal, state, chunk_size):
    if not causal:
        total = k.transpose(-1, -2) @ v
        if state is not None:
            total = total + state
        return q @ total, total
    B, H, L, Dk = q.shape
    C = min(chunk_size, L)  # a sequence shorter than a chunk is one chunk, unpadded
    pad = (-L) % C
    if pad:  # zero rows add nothing to the state and read out zeros
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    n = (L + pad) // C
    qc = q.reshape(B, H, n, C, Dk)
    kc = k.reshape(B, H, n, C, Dk)
    vc = v.reshape(B, H, n, C, -1)
    chunk_kv = kc.transpose(-1, -2) @ vc  # (B, H, n, Dk, Dv)
    if state is not None:
        chunk_kv = torch.cat([state[:, :, None], chunk_kv], dim=2)
    else:
        chunk_kv = F.pad(chunk_kv, (0, 0, 0, 0, 1, 0))
    states = chunk_kv.cumsum(dim=2)  # states[:, :, i] = state before chunk i
    o = (qc @ kc.transpose(-1, -2)).tril() @ vc  # within chunks
    if n > 1 or state is not None:  # one chunk from an empty state has nothing earlier
        o = o + qc @ states[:, :, :-1]
    return o.reshape(B, H, n * C, -1)[:, :, :L], states[:, :, -1]


def _recurrent(q, k, v, causal, state):
    B, H, L, Dk = q.shape
    S = k.shape[2]
    if state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    if not causal:
        for t in range(S):
            state = state + k[:, :, t, :, None] * v[:, :, t, None, :]
        return q @ state, state
    outputs = []
    for t in range(L):
        state = state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append((q[:, :, t, None, :] @ state)[:, :, 0])
    o = torch.stack(outputs, dim=2) if outputs else q.new_zeros(B, H, 0, v.shape[-1])
    return o, state
