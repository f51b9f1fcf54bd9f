"""Gated Slot Attention (Zhang et al. 2024, "Gated Slot Attention for Efficient Linear-Time
Sequence Modeling"): a bounded memory of m slots of keys and values, each slot forgotten at
its own data-dependent rate and written in proportion to what it forgets,

    K_t = diag(a_t) K_{t-1} + (1 - a_t) k_t^T ,   V_t = diag(a_t) V_{t-1} + (1 - a_t) v_t^T
    o_t = V_t^T softmax(K_t q_t)                     (K_t: (m, Dk), V_t: (m, Dv))

Two passes of gated linear attention: the first reads the key memory (its gate lies on the
slot axis of the state, which the first pass reads out), the softmax over slots, then the
second pass is ``gla`` with queries softmax(K_t q_t), keys 1 - a_t gated by a_t, values v_t.
The chunk form of the first pass forms each chunk's slot decays between positions j <= t
as exp of the log decays summed over (j, t], so nothing overflows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena.ops._checks import check_chunk_size, check_form, check_qkv, check_state, \
    compute_dtype, tracing
from attnarena.ops.gated import FACTOR_LIMIT, check_log_decay, gla, segment_sums


def gated_slot_attention(q, k, v, *, log_alpha, form="chunk", chunk_size=64,
                         initial_state=None, return_state=False):
    """Gated Slot Attention.

    Args:
        q, k: (B, H, L, Dk); v: (B, H, L, Dv).
        log_alpha: (B, H, L, m) <= 0, the log of each slot's forget gate a_t (m slots).
        form: "recurrent" (reference loop), "chunk" or "parallel" (one chunk).
        initial_state: (K (B, H, m, Dk), V (B, H, m, Dv)) or None (empty slots).
        return_state: also return the final (K, V).

    Returns:
        o (B, H, L, Dv) in the dtype of q, or (o, (K, V)).
    """
    check_qkv(q, k, v, same_length=True)
    check_form(form)
    check_chunk_size(chunk_size)
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    if not isinstance(log_alpha, torch.Tensor) or log_alpha.dim() != 4 \
            or tuple(log_alpha.shape[:3]) != (B, H, L):
        raise ValueError(f"log_alpha must have shape (B, H, L, slots) = ({B}, {H}, {L}, m), "
                         f"got {tuple(getattr(log_alpha, 'shape', ()))}")
    m = log_alpha.shape[-1]
    check_log_decay(log_alpha, (B, H, L, m), "log_alpha")
    dtype = compute_dtype(q.dtype)
    if initial_state is None:
        K0, V0 = q.new_zeros(B, H, m, Dk, dtype=dtype), q.new_zeros(B, H, m, Dv, dtype=dtype)
    else:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise ValueError("initial_state must be the pair (K, V) of slot memories")
        check_state(initial_state[0], (B, H, m, Dk), "initial_state K")
        check_state(initial_state[1], (B, H, m, Dv), "initial_state V")
        K0, V0 = (s.to(dtype) for s in initial_state)
    out_dtype = q.dtype
    q, k, v, log_alpha = (t.to(dtype) for t in (q, k, v, log_alpha))
    if form == "recurrent":
        o, K, V = _recurrent(q, k, v, log_alpha, K0, V0)
    else:
        C = L if form == "parallel" else min(chunk_size, L)
        scores, K = _read_keys(q, k, log_alpha, K0, C)
        write = -torch.expm1(log_alpha)  # 1 - a_t
        o, V = gla(scores.softmax(-1), write, v, log_g=log_alpha, form="chunk", chunk_size=C,
                   initial_state=V0, return_state=True)
    o = o.to(out_dtype)
    return (o, (K, V)) if return_state else o


def _recurrent(q, k, v, log_alpha, K, V):
    alpha = log_alpha.exp()
    outputs = []
    for t in range(q.shape[2]):
        a = alpha[:, :, t, :, None]
        K = a * K + (1 - a) * k[:, :, t, None, :]
        V = a * V + (1 - a) * v[:, :, t, None, :]
        p = (K @ q[:, :, t, :, None])[..., 0].softmax(-1)  # (B, H, m)
        outputs.append((p[:, :, None, :] @ V)[:, :, 0])
    return torch.stack(outputs, 2), K, V


def _read_keys(q, k, log_alpha, K, C):
    """First pass: scores K_t q_t (B, H, L, m) for every t, chunk by chunk, and the final K."""
    B, H, L, Dk = q.shape
    pad = (-L) % C
    if pad:  # padded steps: a = 1 and no write leave the slots as they are
        q, k = F.pad(q, (0, 0, 0, pad)), F.pad(k, (0, 0, 0, pad))
        log_alpha = F.pad(log_alpha, (0, 0, 0, pad))
    write = -torch.expm1(log_alpha)
    causal = torch.ones(C, C, dtype=q.dtype, device=q.device).tril()
    scores = []
    # split once: a slice a step would give each its own full-size gradient (ops._blocks)
    for qc, kc, g, wc in zip(*(t.split(C, dim=2) for t in (q, k, log_alpha, write))):
        # g, wc: (B, H, C, m)
        prefix = g.cumsum(dim=2)  # (B, H, C, m): log decay from the chunk's start to t
        attend = qc @ kc.transpose(-1, -2)  # (B, H, C, C) = q_t . k_j
        if tracing() or bool((prefix[:, :, -1] < -FACTOR_LIMIT).any()):
            # a slot that decays by more than exp(-30) in the chunk: each decay summed over
            # its own span (B, H, m, C, C), exact for any decay
            decay = segment_sums(g, dim=2).exp()  # exp(sum over (j, t]), t >= j
            inner = torch.einsum("bhitj,bhji,bhtj->bhti", decay, wc, attend)
        else:  # exp(P_t - P_j) = exp(P_t) exp(-P_j), each factor within exp(+-30): a product
            inner = prefix.exp() * ((attend * causal) @ (wc * (-prefix).exp()))
        scores.append(inner + prefix.exp() * (qc @ K.transpose(-1, -2)))
        to_end = (prefix[:, :, -1:] - prefix).exp() * wc  # (B, H, C, m)
        K = prefix[:, :, -1, :, None].exp() * K + to_end.transpose(-1, -2) @ kc
    return torch.cat(scores, dim=2)[:, :, :L], K
