"""The delta rule: a linear-attention state that corrects what it stores.

    DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with
    the Delta Rule over Sequence Length"):
        S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T ,   o_t = S_t^T q_t
    Gated DeltaNet (Yang et al. 2025, "Gated Delta Networks: Improving Mamba2 with Delta
    Rule"):
        S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T

    DeltaProduct (Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs
    via Householder Products"): n_h delta-rule steps per token, each with its own key,
    value and beta, so the transition is a product of n_h generalized Householder
    matrices; the query reads the state after the last step.

Chunkwise form (the WY representation): inside a chunk the state is
S_t = g_t S_0 + sum_{j<=t} (g_t / g_j) k_j u_j^T with g the cumulative decay, and the
pseudo-values U solve the unit lower-triangular system
    (I + tril(diag(beta) (Gamma * K K^T), -1)) U = diag(beta) (V - diag(g) K S_0),
Gamma_ij = g_i / g_j. Every decay ratio has i >= j, so it is <= 1. The solve is batched
over chunks; only the (Dk, Dv) state passes from chunk to chunk. The parallel form is one
chunk spanning the sequence; the recurrent form is the reference loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena._validate import entering
from attnarena.ops._blocks import in_blocks
from attnarena.ops._checks import (check_chunk_size, check_form, check_qkv, check_state,
                                   compute_dtype)
from attnarena.ops.gated import check_log_decay, segment_sums, suffix_sums


def _check_beta(beta, shape):
    if not isinstance(beta, torch.Tensor) or not beta.is_floating_point():
        raise TypeError(f"beta must be a floating-point tensor, got "
                        f"{getattr(beta, 'dtype', type(beta).__name__)}")
    if tuple(beta.shape) != tuple(shape):
        raise ValueError(f"beta must have shape {tuple(shape)}, got {tuple(beta.shape)}")
    if entering() and (torch.isnan(beta).any() or (beta < 0).any()
                       or (beta > 2).any()):
        raise ValueError("beta must lie in [0, 2] (the delta rule's learning rate; 0 skips a "
                         "token, above 1 the transition I - beta k k^T of a unit key has a "
                         f"negative eigenvalue); got values in [{float(beta.min()):.4g}, "
                         f"{float(beta.max()):.4g}]")


def delta_rule(q, k, v, *, beta, form="chunk", chunk_size=64, initial_state=None,
               return_state=False):
    """DeltaNet's recurrence.

    Args:
        q, k: (B, H, L, Dk); k is used as given (DeltaNet L2-normalizes it first).
        v: (B, H, L, Dv).
        beta: (B, H, L) in [0, 2]. The paper's range is (0, 1); (1, 2) gives the transition
            I - beta k k^T of a unit key the eigenvalue 1 - beta < 0 (Grazzi et al. 2025,
            "Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues"); 0
            leaves the state as is, which is how padding is skipped.
        form: "recurrent" (reference), "chunk" (WY chunkwise) or "parallel".
        chunk_size, initial_state (B, H, Dk, Dv), return_state: as in linear_attention.

    Returns:
        o (B, H, L, Dv) in the dtype of q, or (o, state) with ``return_state``.
    """
    return _delta(q, k, v, beta, None, form, chunk_size, initial_state, return_state)


def gated_delta_rule(q, k, v, *, log_alpha, beta, form="chunk", chunk_size=64,
                     initial_state=None, return_state=False):
    """Gated DeltaNet's recurrence; as ``delta_rule`` plus log_alpha: (B, H, L) <= 0, the
    log of the per-token decay alpha."""
    return _delta(q, k, v, beta, log_alpha, form, chunk_size, initial_state, return_state)


def delta_product(q, k, v, *, beta, log_alpha=None, form="chunk", chunk_size=64,
                  initial_state=None, return_state=False):
    """DeltaProduct's recurrence: for each token t, the decay alpha_t (when ``log_alpha``
    is given; Gated DeltaProduct) and then, for j = 1..n_h,
    S <- (I - beta_tj k_tj k_tj^T) S + beta_tj k_tj v_tj^T; then o_t = S^T q_t.

    Args:
        q: (B, H, L, Dk).
        k: (B, H, L, n_h, Dk); v: (B, H, L, n_h, Dv); beta: (B, H, L, n_h) in [0, 2].
        log_alpha: (B, H, L) <= 0 or None (no decay).
        form, chunk_size (in tokens), initial_state, return_state: as in ``delta_rule``.

    The n_h steps of a token are n_h consecutive steps of the delta rule over a sequence
    n_h times as long, with the decay on each token's first step and the query read at
    its last, so every form of ``delta_rule`` serves.
    """
    if not isinstance(k, torch.Tensor) or k.dim() != 5 or not isinstance(v, torch.Tensor) \
            or v.dim() != 5 or not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError("delta_product takes q (B, H, L, Dk), k (B, H, L, n_h, Dk) and "
                         f"v (B, H, L, n_h, Dv); got {_shape(q)}, {_shape(k)} and {_shape(v)}")
    B, H, L, n, Dk = k.shape
    if tuple(q.shape) != (B, H, L, Dk) or v.shape[:4] != k.shape[:4]:
        raise ValueError(f"delta_product: q {_shape(q)}, k {_shape(k)} and v {_shape(v)} "
                         "disagree; q must be (B, H, L, Dk) and v (B, H, L, n_h, Dv) for k "
                         "(B, H, L, n_h, Dk)")
    _check_beta(beta, (B, H, L, n))
    if log_alpha is not None:
        check_log_decay(log_alpha, (B, H, L), "log_alpha")
    check_chunk_size(chunk_size)
    reads = q.new_zeros(B, H, L, n, Dk)
    reads[:, :, :, -1] = q
    decay = None
    if log_alpha is not None:
        decay = log_alpha.new_zeros(B, H, L, n)
        decay[..., 0] = log_alpha
        decay = decay.reshape(B, H, L * n)
    out = _delta(reads.reshape(B, H, L * n, Dk), k.reshape(B, H, L * n, Dk),
                 v.reshape(B, H, L * n, -1), beta.reshape(B, H, L * n), decay, form,
                 chunk_size * n, initial_state, True)
    o = out[0][:, :, n - 1::n]
    return (o, out[1]) if return_state else o


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _delta(q, k, v, beta, log_alpha, form, chunk_size, initial_state, return_state):
    check_qkv(q, k, v, same_length=True)
    check_form(form)
    check_chunk_size(chunk_size)
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    _check_beta(beta, (B, H, L))
    if log_alpha is not None:
        check_log_decay(log_alpha, (B, H, L), "log_alpha")
    if initial_state is not None:
        check_state(initial_state, (B, H, Dk, Dv))
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    q, k, v, beta = (t.to(dtype) for t in (q, k, v, beta))
    log_alpha = None if log_alpha is None else log_alpha.to(dtype)
    state = (q.new_zeros(B, H, Dk, Dv) if initial_state is None
             else initial_state.to(dtype))
    if form == "recurrent":
        o, state = _recurrent(q, k, v, beta, log_alpha, state)
    else:  # one chunk of the whole length is never cut into blocks
        C = L if form == "parallel" else min(chunk_size, L)
        o, state = in_blocks(lambda parts, S: _chunked(*parts, S, C),
                             (q, k, v, beta, log_alpha), state, C)
    o = o.to(out_dtype)
    return (o, state) if return_state else o


def _recurrent(q, k, v, beta, log_alpha, S):
    """The reference, token by token."""
    alpha = torch.ones_like(beta) if log_alpha is None else log_alpha.exp()
    outputs = []
    for t in range(q.shape[2]):
        k_t = k[:, :, t]  # (B, H, Dk)
        S = alpha[:, :, t, None, None] * S
        error = v[:, :, t] - (k_t[:, :, None, :] @ S)[:, :, 0]  # v_t - S^T k_t
        S = S + beta[:, :, t, None, None] * k_t[..., :, None] * error[..., None, :]
        outputs.append((q[:, :, t, None, :] @ S)[:, :, 0])
    return torch.stack(outputs, dim=2), S


def _chunked(q, k, v, beta, log_alpha, S, C):
    B, H, L, Dk = q.shape
    Dv = v.shape[-1]
    pad = (-L) % C
    if pad:  # padded steps: beta = 0 and no decay leave the state untouched
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        beta = F.pad(beta, (0, pad))
        log_alpha = None if log_alpha is None else F.pad(log_alpha, (0, pad))
    n = (L + pad) // C
    # contiguous once: heads split from (B, L, H, D) are strided views, which every batched
    # product below would otherwise copy again
    qc, kc, vc = (t.contiguous().reshape(B, H, n, C, -1) for t in (q, k, v))
    bc = beta.reshape(B, H, n, C, 1)
    if log_alpha is None:  # DeltaNet: no decay, so every ratio below is 1 and no factor
        ratio = torch.ones(C, C, dtype=q.dtype, device=q.device).tril()
        q_from_start, k_at_start, k_to_end = qc, kc, kc
        end_decay = None
    else:
        g = log_alpha.reshape(B, H, n, C)
        prefix = g.cumsum(dim=-1)[..., None]  # (B, H, n, C, 1): log decay since chunk start
        ratio = segment_sums(g, dim=-1).exp()  # (B, H, n, C, C): g_i / g_j, i >= j; else 0
        q_from_start, k_at_start = qc * prefix.exp(), kc * prefix.exp()
        k_to_end = kc * suffix_sums(g[..., None], dim=3).exp()
        end_decay = prefix[:, :, :, -1:].exp()  # (B, H, n, 1, 1)

    # T = (I + strictly_lower(diag(beta) Gamma K K^T))^-1 diag(beta), batched over chunks.
    # The solve reads only the strict lower triangle (unit diagonal, upper part ignored, and
    # its gradient kept to that triangle), so the matrix is passed without masking it.
    system = bc * ratio * (kc @ kc.transpose(-1, -2))
    T = torch.linalg.solve_triangular(system, torch.diag_embed(bc[..., 0]), upper=False,
                                      unitriangular=True)
    W = T @ k_at_start  # (B, H, n, C, Dk)
    U = T @ vc  # (B, H, n, C, Dv)
    del system, T  # not read below (autograd keeps its own references)
    attend = (qc @ kc.transpose(-1, -2)) * ratio  # (B, H, n, C, C), lower incl. diagonal

    # Within chunk i, pseudo_i = U_i - W_i S_i, so o_i = (q_i - A_i W_i) S_i + A_i U_i and
    # S_(i+1) = (end_i I - K_i^T W_i) S_i + K_i^T U_i with K_i the keys decayed to the
    # chunk's end: everything but one (Dk, Dk) @ (Dk, Dv) product per chunk is batched over
    # chunks, and the sequential loop carries only that product.
    flat = B * H * n  # the products below are fused with their sums as 3-D baddbmm
    reads = torch.baddbmm(q_from_start.reshape(flat, C, Dk), attend.reshape(flat, C, C),
                          W.reshape(flat, C, Dk), alpha=-1).reshape(B, H, n, C, Dk)
    within = attend @ U  # (B, H, n, C, Dv)
    k_end_t = k_to_end.transpose(-1, -2)
    transition = (k_end_t @ W).neg_()  # (B, H, n, Dk, Dk); in place: nothing reads the product
    transition.diagonal(dim1=-2, dim2=-1).add_(1 if end_decay is None else end_decay[..., 0])
    writes = k_end_t @ U  # (B, H, n, Dk, Dv)
    del attend, W, U
    before = []
    # unbound once (see ops.gated): each chunk's slice has its own gradient, not one a step
    # as large as all the chunks
    for write_i, transition_i in zip(writes.unbind(2), transition.unbind(2)):
        before.append(S)
        S = torch.baddbmm(write_i.reshape(B * H, Dk, Dv), transition_i.reshape(B * H, Dk, Dk),
                          S.reshape(B * H, Dk, Dv)).reshape(B, H, Dk, Dv)
    o = torch.baddbmm(within.reshape(flat, C, Dv), reads.reshape(flat, C, Dk),
                      torch.stack(before, dim=2).reshape(flat, Dk, Dv)).reshape(B, H, n * C, Dv)
    return o[:, :, :L], S
