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
from attnarena.ops._blocks import spans
from attnarena.ops._checks import check_inner_model, check_qkv, check_state, compute_dtype

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
    outputs = []
    sizes = spans(q.shape[2], b, offset)  # the first piece: the rest of the current batch
    for qc, kc, vc, ec in zip(*(x.split(sizes, dim=2) for x in (q, k, v, eta))):
        n = qc.shape[2]
        errors = kc @ start - vc  # (B, H, n, Dv): e_s = S'^T k_s - v_s
        scaled = ec[..., None] * errors
        inner = (qc @ kc.transpose(-1, -2)).tril()  # q_t . k_s for s <= t
        outputs.append(qc @ (start - grad) - inner @ scaled)
        grad = grad + kc.transpose(-1, -2) @ scaled
        offset += n
        if offset == b:
            start, grad, offset = start - grad, torch.zeros_like(grad), 0
    return torch.cat(outputs, dim=2), start, grad, offset


# TTT-Linear as its authors released it (test-time-training/ttt-lm-pytorch): the inner model
# is f(x) = x + LN(x W + b), a per-head layer norm with learned scale and shift around a
# linear map with a bias, trained to reconstruct v - k. Within a mini-batch the token at
# place i (from 0) reads the model after the summed gradients of the tokens so far scaled
# by its token rate token_eta[i] (1 / (i + 1) plus a learned offset: the mean gradient),
# and the next mini-batch starts from the model after its last token.

def layer_norm_l2_grad(z, target, weight, bias, eps=1e-6):
    """The gradient wrt z of 1/2 ||LN(z) - target||^2, LN(z) = weight * (z - mu) / sigma +
    bias over the last axis: the layer norm's backward written out (the dual form needs
    it in closed form)."""
    width = z.shape[-1]
    mean = z.mean(-1, keepdim=True)
    centered = z - mean
    std = torch.sqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
    normed = centered / std
    grad_normed = (weight * normed + bias - target) * weight
    return (width * grad_normed - grad_normed.sum(-1, keepdim=True)
            - normed * (grad_normed * normed).sum(-1, keepdim=True)) / (width * std)


def _layer_norm(z, weight, bias, eps=1e-6):
    mean = z.mean(-1, keepdim=True)
    centered = z - mean
    return weight * centered / torch.sqrt(centered.pow(2).mean(-1, keepdim=True) + eps) + bias


def ttt_layer_norm(q, k, v, *, lr, token_eta, ln_weight, ln_bias, initial_weight,
                   initial_bias, form="chunk", initial_state=None, return_state=False):
    """Mini-batch test-time training of the authors' TTT-Linear inner model,
    f(x) = x + LN(x W + b), on the loss 1/2 ||LN(k W + b) - (v - k)||^2.

    Args:
        q, k, v: (B, H, L, D).
        lr: (B, H, L) >= 0, each token's learning rate (0 skips the token: padding).
        token_eta: (b,) >= 0, the scale of the summed gradients read at each place of a
            mini-batch of b tokens (the authors': 1 / (i + 1) plus a learned offset).
        ln_weight, ln_bias: (H, D), the inner layer norm's scale and shift.
        initial_weight: (H, D, D) or (B, H, D, D); initial_bias: (H, D) or (B, H, D): the
            model the sequence starts from (ignored when ``initial_state`` is given).
        form: "chunk" (dual form) or "recurrent" (primal form).
        initial_state: the 5-tuple ``return_state`` gives, (W', b', G_W, G_b, i): the
            mini-batch's starting model, its gradients summed (scaled by each token's lr)
            over its first i tokens.
        return_state: also return that tuple after the last token.

    Returns:
        f(q_t) under the model token t reads: (B, H, L, D), or (o, state).
    """
    B, H, L, D = check_inner_model(q, k, v, lr, form, TTT_FORMS, "the layer-norm inner model")
    if not isinstance(token_eta, torch.Tensor) or token_eta.dim() != 1:
        raise ValueError("token_eta must be a 1-d tensor (one rate per place in a mini-batch)")
    b = token_eta.shape[0]
    dtype = compute_dtype(q.dtype)
    if initial_state is None:
        weight = initial_weight.to(dtype).expand(B, H, D, D)
        bias = initial_bias.to(dtype).expand(B, H, D)
        state = (weight, bias, torch.zeros_like(weight), torch.zeros_like(bias), 0)
    else:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 5:
            raise ValueError("initial_state must be the tuple (W', b', G_W, G_b, i) that "
                             "return_state gives")
        *tensors, offset = initial_state
        for name, tensor, shape in zip(("W'", "b'", "G_W", "G_b"), tensors,
                                       ((B, H, D, D), (B, H, D)) * 2):
            check_state(tensor, shape, f"initial_state {name}")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < b:
            raise ValueError(f"initial_state's i must be an int in [0, {b}), got {offset!r}")
        state = (*(t.to(dtype) for t in tensors), offset)
    out_dtype = q.dtype
    q, k, v, lr, token_eta = (t.to(dtype) for t in (q, k, v, lr, token_eta))
    norm = (ln_weight.to(dtype)[None, :, None], ln_bias.to(dtype)[None, :, None])
    run = _ln_primal if form == "recurrent" else _ln_dual
    z, state = run(q, k, v, lr, token_eta, norm, state)
    o = (q + _layer_norm(z, *norm)).to(out_dtype)
    return (o, state) if return_state else o


def _ln_primal(q, k, v, lr, token_eta, norm, state):
    weight, bias, grad_w, grad_b, offset = state
    b, outputs = token_eta.shape[0], []
    for t in range(q.shape[2]):
        k_t = k[:, :, t]
        z_t = (k_t[:, :, None] @ weight)[:, :, 0] + bias  # k_t W' + b'
        g = layer_norm_l2_grad(z_t[:, :, None], (v[:, :, t] - k_t)[:, :, None],
                               *norm)[:, :, 0]
        scaled = lr[:, :, t, None] * g
        grad_w = grad_w + k_t[..., :, None] * scaled[..., None, :]
        grad_b = grad_b + scaled
        rate = token_eta[offset]
        outputs.append((q[:, :, t, None] @ (weight - rate * grad_w))[:, :, 0]
                       + bias - rate * grad_b)
        offset += 1
        if offset == b:  # the mini-batch ends: its last token's model starts the next
            weight, bias = weight - rate * grad_w, bias - rate * grad_b
            grad_w, grad_b, offset = torch.zeros_like(grad_w), torch.zeros_like(grad_b), 0
    return torch.stack(outputs, dim=2), (weight, bias, grad_w, grad_b, offset)


def _ln_dual(q, k, v, lr, token_eta, norm, state):
    weight, bias, grad_w, grad_b, offset = state
    b, outputs = token_eta.shape[0], []
    sizes = spans(q.shape[2], b, offset)  # the first piece: the rest of the current batch
    for qc, kc, vc, lc in zip(*(x.split(sizes, dim=2) for x in (q, k, v, lr))):
        n = qc.shape[2]
        rates = token_eta[offset:offset + n, None]  # (n, 1)
        g = layer_norm_l2_grad(kc @ weight + bias[:, :, None], vc - kc, *norm)  # (B,H,n,D)
        scaled = lc[..., None] * g
        # q_t W_t + b_t = q_t W' + b' - rate_t (q_t G_W + G_b + sum_{s<=t} (q_t.k_s + 1)
        # lr_s g_s): the gradients so far in this mini-batch, then its own tokens'
        reads = ((qc @ kc.transpose(-1, -2)) + 1).tril()  # (B, H, n, n)
        earlier = qc @ grad_w + grad_b[:, :, None]
        outputs.append(qc @ weight + bias[:, :, None] - rates * (earlier + reads @ scaled))
        grad_w = grad_w + kc.transpose(-1, -2) @ scaled
        grad_b = grad_b + scaled.sum(2)
        offset += n
        if offset == b:
            rate = token_eta[b - 1]
            weight, bias = weight - rate * grad_w, bias - rate * grad_b
            grad_w, grad_b, offset = torch.zeros_like(grad_w), torch.zeros_like(grad_b), 0
    return torch.cat(outputs, dim=2), (weight, bias, grad_w, grad_b, offset)
