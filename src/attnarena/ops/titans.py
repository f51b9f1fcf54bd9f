"""Titans' neural long-term memory (Behrouz et al. 2025, "Titans: Learning to Memorize at
Test Time"): an MLP memory M(x) = W2 silu(W1 x) trained while the sequence is read, by
gradient descent with momentum and weight decay on the associative loss
l(M; k_t, v_t) = 1/2 ||M(k_t) - v_t||^2:

    S_t = eta_t S_{t-1} - theta_t grad l(M'; k_t, v_t)      (momentum: "surprise")
    M_t = (1 - alpha_t) M_{t-1} + S_t                       (forgetting)
    y_t = M_t(q_t)

Chunkwise-parallel training as in the paper: the tokens of a mini-batch of b take their
gradients at the weights M' the mini-batch starts from; inside a segment the momentum and
forgetting recurrences unroll into lower-triangular coefficient matrices,
M_t = D_t M_0 + (sum_u a_tu P_u) S_0 - sum_s c_ts theta_s g_s with c = a e, a_tu the
forgetting and e_us the momentum products over (u, t] and (s, u], so the reads M_t(q_t)
and the segment's final state are matrix products. The recurrent form runs the equations
token by token with the same gradients. Per-token gradients of the two-layer memory:
g2 = delta z^T and g1 = (W2^T delta * silu'(a)) k^T, with a = W1 k, z = silu(a),
delta = W2 z - v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena._validate import check_int
from attnarena.ops._blocks import spans
from attnarena.ops._checks import check_inner_model, check_state, compute_dtype
from attnarena.ops.gated import check_log_decay, segment_sums

MEMORY_FORMS = ("chunk", "recurrent")


def _silu_slope(a):
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


def neural_memory(q, k, v, *, lr, log_momentum, log_keep, weights, mini_batch=16,
                  form="chunk", initial_state=None, return_state=False):
    """Titans' memory read and written along a sequence.

    Args:
        q, k, v: (B, H, L, D).
        lr: (B, H, L) >= 0, theta_t.  log_momentum: (B, H, L) <= 0, log eta_t.
        log_keep: (B, H, L) <= 0, log (1 - alpha_t).
        weights: (W1 (B, H, Dh, D), W2 (B, H, D, Dh)), the memory before the first token
            (ignored when ``initial_state`` continues a sequence).
        mini_batch: b.  form: "chunk" or "recurrent".
        initial_state: the tuple ``return_state`` gave, to continue a sequence.

    Returns:
        y (B, H, L, D) in the dtype of q, or (y, state).
    """
    check_int(mini_batch, "mini_batch")
    B, H, L, D = check_inner_model(q, k, v, lr, form, MEMORY_FORMS, "the memory")
    check_log_decay(log_momentum, (B, H, L), "log_momentum")
    check_log_decay(log_keep, (B, H, L), "log_keep")
    W1, W2 = weights
    Dh = W1.shape[-2]
    check_state(W1, (B, H, Dh, D), "weights W1")
    check_state(W2, (B, H, D, Dh), "weights W2")
    dtype = compute_dtype(q.dtype)
    if initial_state is None:
        W1, W2 = W1.to(dtype), W2.to(dtype)
        state = (W1, W2, torch.zeros_like(W1), torch.zeros_like(W2), W1, W2, 0)
    else:
        state = tuple(s.to(dtype) for s in initial_state[:6]) + (initial_state[6],)
        offset = state[6]
        if isinstance(offset, bool) or not isinstance(offset, int) \
                or not 0 <= offset < mini_batch:
            raise ValueError(f"initial_state's offset must be an int in [0, {mini_batch}), "
                             f"got {offset!r}")
    out_dtype = q.dtype
    q, k, v, lr, log_momentum, log_keep = (t.to(dtype) for t in (q, k, v, lr, log_momentum,
                                                                    log_keep))
    run = _recurrent if form == "recurrent" else _chunked
    y, state = run(q, k, v, lr, log_momentum, log_keep, state, mini_batch)
    y = y.to(out_dtype)
    return (y, state) if return_state else y


def _gradients(k, v, W1s, W2s):
    """Per-token pieces of the gradient at the mini-batch's start weights: (u, z, delta)
    with g1 = u k^T and g2 = delta z^T."""
    a = k @ W1s.transpose(-1, -2)  # (..., n, Dh)
    z = F.silu(a)
    delta = z @ W2s.transpose(-1, -2) - v  # (..., n, D)
    u = (delta @ W2s) * _silu_slope(a)  # (..., n, Dh)
    return u, z, delta


def _recurrent(q, k, v, lr, log_momentum, log_keep, state, b):
    W1, W2, S1, S2, W1s, W2s, offset = state
    eta, keep = log_momentum.exp(), log_keep.exp()
    outputs = []
    for t in range(q.shape[2]):
        u, z, delta = _gradients(k[:, :, t:t + 1], v[:, :, t:t + 1], W1s, W2s)
        theta = lr[:, :, t, None, None]
        S1 = eta[:, :, t, None, None] * S1 - theta * u.transpose(-1, -2) @ k[:, :, t:t + 1]
        S2 = eta[:, :, t, None, None] * S2 - theta * delta.transpose(-1, -2) @ z
        W1 = keep[:, :, t, None, None] * W1 + S1
        W2 = keep[:, :, t, None, None] * W2 + S2
        hidden = F.silu(q[:, :, t:t + 1] @ W1.transpose(-1, -2))
        outputs.append(hidden @ W2.transpose(-1, -2))
        offset += 1
        if offset == b:  # the mini-batch ends: later gradients at the weights reached
            W1s, W2s, offset = W1, W2, 0
    return torch.cat(outputs, dim=2), (W1, W2, S1, S2, W1s, W2s, offset)


def _chunked(q, k, v, lr, log_momentum, log_keep, state, b):
    W1, W2, S1, S2, W1s, W2s, offset = state
    outputs = []
    sizes = spans(q.shape[2], b, offset)  # the first piece: the rest of the current batch
    for qc, kc, vc, theta, g_keep, g_mom in zip(*(x.split(sizes, dim=2) for x in (
            q, k, v, lr, log_keep, log_momentum))):
        n = qc.shape[2]
        forget = segment_sums(g_keep, dim=-1).exp()  # a_tu over (u, t]
        carry = segment_sums(g_mom, dim=-1).exp()  # e_us over (s, u]
        decay = g_keep.cumsum(-1).exp()  # D_t
        momentum = g_mom.cumsum(-1).exp()  # P_u
        coeff = forget @ carry * theta[..., None, :]  # c_ts theta_s
        from_s = (forget @ momentum[..., None])[..., 0]  # sum_u a_tu P_u
        u, z, delta = _gradients(kc, vc, W1s, W2s)
        pre = decay[..., None] * (qc @ W1.transpose(-1, -2)) \
            + from_s[..., None] * (qc @ S1.transpose(-1, -2)) \
            - (coeff * (qc @ kc.transpose(-1, -2))) @ u
        hidden = F.silu(pre)
        outputs.append(decay[..., None] * (hidden @ W2.transpose(-1, -2))
                       + from_s[..., None] * (hidden @ S2.transpose(-1, -2))
                       - (coeff * (hidden @ z.transpose(-1, -2))) @ delta)
        last = coeff[..., -1, :, None]  # (B, H, n, 1): c_ns theta_s
        step = carry[..., -1, :, None] * theta[..., None]  # e_ns theta_s
        end_decay, end_from_s = decay[..., -1, None, None], from_s[..., -1, None, None]
        W1_new = end_decay * W1 + end_from_s * S1 - u.transpose(-1, -2) @ (last * kc)
        W2_new = end_decay * W2 + end_from_s * S2 - delta.transpose(-1, -2) @ (last * z)
        S1 = momentum[..., -1, None, None] * S1 - u.transpose(-1, -2) @ (step * kc)
        S2 = momentum[..., -1, None, None] * S2 - delta.transpose(-1, -2) @ (step * z)
        W1, W2 = W1_new, W2_new
        offset += n
        if offset == b:
            W1s, W2s, offset = W1, W2, 0
    return torch.cat(outputs, dim=2), (W1, W2, S1, S2, W1s, W2s, offset)
