"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive
Hidden States"): the state is the weight S (Dk, Dv) of a linear inner model trained while
the sequence is read, one gradient step of the self-supervised loss
l(S; k_t, v_t) = 1/2 ||S^T k_t - v_t||^2 per token, with learning rate eta_t; the output
is the trained model applied to the query, o_t = S_t^T q_t.

Mini-batch TTT: the tokens of a mini-batch of b take their gradients at the state S' the
mini-batch starts from, e_s = S'^T k_s - v_s, so

    S_t = S' - sum_{s <= t, s in the mini-batch} eta_s k_s e_s^T.

b = 1 is online gradient descent (the delta rule). The chunk form is the paper's dual form
(per mini-batch, O = Q S' - tril(eta * Q K^T) E and S'' = S' - K^T (eta * E)); the
recurrent form is the primal form, token by token, with the state (S', G, i): the mini-
batch's start, the gradient summed over its first i tokens. Both compute the same model.
"""
from __future__ import annotations

import torch

from attnarena._validate import check_int, entering
from attnarena.ops._checks import check_qkv, check_state, compute_dtype

TTT_FORMS = ("chunk", "recurrent")


def ttt_linear(q, k, v, *, eta, mini_batch=16, form="chunk", initial_state=None,
               return_state=False):
    """Mini-batch test-time training of a linear model.

    Args:
        q, k: (B, H, L, Dk); v: (B, H, L, Dv).
        eta: (B, H, L) >= 0, each token's learning rate (0 skips the token).
        mini_batch: b, tokens per gradient step's shared state.
        form: "chunk" (dual form) or "recurrent" (primal form).
        initial_state: S (B, H, Dk, Dv) at a mini-batch boundary, or the triple
            (S', G, i) that ``return_state`` gives (i tokens into a mini-batch), or None.
        return_state: also return (S', G, i) after the last token.

    Returns:
        o (B, H, L, Dv) in the dtype of q, or (o, (S', G, i)).
    """
    check_qkv(q, k, v, same_length=True)
    check_int(mini_batch, "mini_batch")
    if form not in TTT_FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms: {', '.join(TTT_FORMS)}")
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    if not isinstance(eta, torch.Tensor) or tuple(eta.shape) != (B, H, L):
        raise ValueError(f"eta must have shape {(B, H, L)}, got "
                         f"{tuple(getattr(eta, 'shape', ())) or type(eta).__name__}")
    if entering() and (torch.isnan(eta).any() or (eta < 0).any()):
        raise ValueError("eta (the inner learning rate) must be >= 0")
    dtype = compute_dtype(q.dtype)
    start, grad, offset = _start(initial_state, (B, H, Dk, Dv), mini_batch, q, dtype)
    out_dtype = q.dtype
    q, k, v, eta = (t.to(dtype) for t in (q, k, v, eta))
    run = _primal if form == "recurrent" else _dual
    o, start, grad, offset = run(q, k, v, eta, start, grad, offset, mini_batch)
    o = o.to(out_dtype)
    return (o, (start, grad, offset)) if return_state else o


def _start(state, shape, b, like, dtype):
    if state is None:
        zeros = like.new_zeros(shape, dtype=dtype)
        return zeros, zeros.clone(), 0
    if isinstance(state, torch.Tensor):
        check_state(state, shape)
        return state.to(dtype), torch.zeros(shape, dtype=dtype, device=state.device), 0
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise ValueError("initial_state must be S (B, H, Dk, Dv) or the triple (S', G, i) "
                         "that return_state gives")
    start, grad, offset = state
    check_state(start, shape, "initial_state S'")
    check_state(grad, shape, "initial_state G")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < b:
        raise ValueError(f"initial_state's i must be an int in [0, {b}), got {offset!r}")
    return start.to(dtype), grad.to(dtype), offset


def _primal(q, k, v, eta, start, grad, offset, b):
    outputs = []
    for t in range(q.shape[2]):
        k_t = k[:, :, t]
        error = (k_t[:, :, None, :] @ start)[:, :, 0] - v[:, :, t]  # S'^T k_t - v_t
        grad = grad + eta[:, :, t, None, None] * k_t[..., :, None] * error[..., None, :]
        outputs.append((q[:, :, t, None, :] @ (start - grad))[:, :, 0])
        offset += 1
        if offset == b:  # the mini-batch ends: take its step
            start, grad, offset = start - grad, torch.zeros_like(grad), 0
    return torch.stack(outputs, dim=2), start, grad, offset


def _dual(q, k, v, eta, start, grad, offset, b):
    L, outputs, t = q.shape[2], [], 0
    while t < L:
        n = min(b - offset, L - t)  # the rest of the current mini-batch
        qc, kc, vc, ec = (x[:, :, t:t + n] for x in (q, k, v, eta))
        errors = kc @ start - vc  # (B, H, n, Dv): e_s = S'^T k_s - v_s
        scaled = ec[..., None] * errors
        inner = (qc @ kc.transpose(-1, -2)).tril()  # q_t . k_s for s <= t
        outputs.append(qc @ (start - grad) - inner @ scaled)
        grad = grad + kc.transpose(-1, -2) @ scaled
        offset, t = offset + n, t + n
        if offset == b:
            start, grad, offset = start - grad, torch.zeros_like(grad), 0
    return torch.cat(outputs, dim=2), start, grad, offset
