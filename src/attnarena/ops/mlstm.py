"""The matrix-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term
Memory") with its stabilized exponential gating.

    C_t = f_t C_{t-1} + i_t v_t k_t^T ,  n_t = f_t n_{t-1} + i_t k_t ,
    h_t = C_t q_t / max(|n_t . q_t|, 1) ,  i_t = exp(i~_t) ,  f_t = sigmoid(f~_t)

The exponential input gate would overflow, so the state is kept scaled by exp(-m_t) with
m_t = max(log f_t + m_{t-1}, i~_t); then h_t = C~_t q_t / max(|n~_t . q_t|, exp(-m_t)),
which is the same value. The state is the pair (S, m): S (B, H, Dk, Dv + 1) holds C~ with
n~ as its last column, m (B, H) the stabilizer.

Forms: ``recurrent`` (the paper's stabilized recurrence, the reference), ``chunk`` (the
stabilizer carried from chunk to chunk, each row of a chunk stabilized by its own maximum)
and ``parallel`` (one chunk spanning the sequence: the paper's parallel form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena._validate import entering
from attnarena.ops._blocks import in_blocks
from attnarena.ops._checks import check_chunk_size, check_form, check_qkv, compute_dtype
from attnarena.ops.gated import segment_sums, suffix_sums


def mlstm(q, k, v, *, input_gate, forget_gate, form="chunk", chunk_size=64,
          initial_state=None, return_state=False):
    """mLSTM over a sequence.

    Args:
        q, k: (B, H, L, Dk); k is used as given (the mixer scales it by Dk^-1/2).
        v: (B, H, L, Dv).
        input_gate: (B, H, L) pre-activations i~ (the gate is exp(i~)).
        forget_gate: (B, H, L) pre-activations f~ (the gate is sigmoid(f~)).
        form: "recurrent" (reference), "chunk" or "parallel".
        initial_state: (S (B, H, Dk, Dv + 1), m (B, H)) from an earlier call.

    Returns:
        h (B, H, L, Dv) in the dtype of q, or (h, (S, m)) with ``return_state``.
    """
    check_qkv(q, k, v, same_length=True)
    check_form(form)
    check_chunk_size(chunk_size)
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    for name, gate in (("input_gate", input_gate), ("forget_gate", forget_gate)):
        if not isinstance(gate, torch.Tensor) or tuple(gate.shape) != (B, H, L):
            got = tuple(gate.shape) if isinstance(gate, torch.Tensor) else type(gate).__name__
            raise ValueError(f"{name} must have shape {(B, H, L)}, got {got}")
        if not gate.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {gate.dtype}")
    # -inf input gates (no input) and +inf forget gates (keep everything) are exact limits,
    # used for padding; NaN, +inf input or -inf forget pre-activations have no meaning.
    for name, gate, bad in (("input_gate", input_gate, float("inf")),
                            ("forget_gate", forget_gate, float("-inf"))):
        if entering() and bool((gate.isnan() | (gate == bad)).any()):
            raise ValueError(f"{name} holds NaN or {bad}; gate pre-activations must be finite "
                             f"(or {-bad} for padding)")
    dtype = compute_dtype(q.dtype)
    out_dtype = q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    log_i, log_f = input_gate.to(dtype), F.logsigmoid(forget_gate.to(dtype))
    if initial_state is None:
        S, m = q.new_zeros(B, H, Dk, Dv + 1), q.new_zeros(B, H)
    else:
        if not (isinstance(initial_state, tuple) and len(initial_state) == 2):
            raise TypeError("initial_state must be the (S, m) pair an earlier call returned")
        S, m = initial_state
        if tuple(S.shape) != (B, H, Dk, Dv + 1) or tuple(m.shape) != (B, H):
            raise ValueError(f"initial_state must be S {(B, H, Dk, Dv + 1)} and m {(B, H)}, "
                             f"got {tuple(S.shape)} and {tuple(m.shape)}")
        S, m = S.to(dtype), m.to(dtype)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # last column: normalizer n
    if form == "recurrent":
        h, S, m = _recurrent(q, k, v1, log_i, log_f, S, m)
    else:
        C = L if form == "parallel" else min(chunk_size, L)  # short: one unpadded chunk

        def run(parts, state):
            h, *state = _chunked(*parts, *state, C)
            return h, tuple(state)

        h, (S, m) = in_blocks(run, (q, k, v1, log_i, log_f), (S, m), C)
    h = h.to(out_dtype)
    return (h, (S, m)) if return_state else h


def _readout(raw, m):
    """raw (..., Dv + 1) = (C~ q, n~ . q) -> C~ q / max(|n~ . q|, exp(-m))."""
    return raw[..., :-1] / torch.maximum(raw[..., -1:].abs(), torch.exp(-m)[..., None])


def _recurrent(q, k, v1, log_i, log_f, S, m):
    outputs = []
    for t in range(q.shape[2]):
        m_new = torch.maximum(log_f[:, :, t] + m, log_i[:, :, t])
        f = torch.exp(log_f[:, :, t] + m - m_new)[..., None, None]
        i = torch.exp(log_i[:, :, t] - m_new)[..., None, None]
        S = f * S + i * k[:, :, t, :, None] * v1[:, :, t, None, :]
        m = m_new
        outputs.append(_readout((q[:, :, t, None, :] @ S)[:, :, 0], m))
    return torch.stack(outputs, dim=2), S, m


def _chunked(q, k, v1, log_i, log_f, S, m, C):
    B, H, L, Dk = q.shape
    pad = (-L) % C
    if pad:  # padded steps: forget gate 1 (log 0), input gate 0 (log -inf)
        q, k, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v1))
        log_f = F.pad(log_f, (0, pad))
        log_i = F.pad(log_i, (0, pad), value=float("-inf"))
    n = (L + pad) // C
    qc, kc, vc = (t.reshape(B, H, n, C, -1) for t in (q, k, v1))
    gi, gf = log_i.reshape(B, H, n, C), log_f.reshape(B, H, n, C)
    prefix = gf.cumsum(-1)  # forget decay from the chunk start through each position
    within = segment_sums(gf, dim=-1) + gi[..., None, :]  # (B, H, n, C, C): log weight j -> i
    # Stabilizers; a row or chunk of padding only (gates -inf) gets a finite one.
    row_max = within.amax(-1).clamp(min=-1e30)  # for the in-chunk part of each row
    weights = torch.exp(within - row_max[..., None])
    intra = ((qc @ kc.transpose(-1, -2)) * weights) @ vc  # (B, H, n, C, Dv + 1)
    to_end = suffix_sums(gf[..., None], dim=3)[..., 0] + gi  # log weight j -> chunk end
    write_max = to_end.amax(-1).clamp(min=-1e30)  # (B, H, n)
    writes = (kc * torch.exp(to_end - write_max[..., None])[..., None]).transpose(-1, -2) @ vc

    states, stabilizers = [], []
    # unbound once (see ops.gated): no zero-filled gradient as large as all chunks a step
    for total, top, write in zip(prefix[..., -1].unbind(2), write_max.unbind(2),
                                 writes.unbind(2)):
        states.append(S)
        stabilizers.append(m)
        m_new = torch.maximum(m + total, top)
        S = (torch.exp(m + total - m_new)[..., None, None] * S
             + torch.exp(top - m_new)[..., None, None] * write)
        m = m_new
    S_prev = torch.stack(states, dim=2)  # (B, H, n, Dk, Dv + 1)
    m_prev = torch.stack(stabilizers, dim=2)  # (B, H, n)
    from_state = m_prev[..., None] + prefix  # (B, H, n, C)
    m_row = torch.maximum(from_state, row_max)
    raw = (torch.exp(from_state - m_row)[..., None] * (qc @ S_prev)
           + torch.exp(row_max - m_row)[..., None] * intra)
    h = _readout(raw, m_row).reshape(B, H, n * C, -1)
    return h[:, :, :L], S, m
