"""Selective state-space scan (Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces"), with the argument layout of the paper's reference scan.

Per channel d and state index n, with the zero-order-hold style discretization of the
reference implementation:
    x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t ,   y_t = C_t . x_t + D u_t ,
and y gated by silu(z) when z is given.

Forms: ``recurrent`` (the reference loop) and ``chunk``: inside chunks of C tokens the state
is exp(P_t) (x_0 + sum_{j<=t} exp(-P_j) delta_j B_j u_j) with P the cumulative log decay,
computed for many chunks at once; only the (d, n) state passes from chunk to chunk. The
factors stay inside float32's range while a chunk's total log decay is above -60; the few
chunks that decay more are stepped token by token.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnarena._validate import entering
from attnarena.ops._checks import check_chunk_size, check_state, compute_dtype, tracing

FACTOR_LIMIT = 60.0
GROUP_TOKENS = 256  # tokens processed together in the chunk form (cache-sized)


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got {t.dtype} "
                            "(complex A is not supported)")
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, d, length), got {tuple(u.shape)}")
    b, d, L = u.shape
    if L == 0:
        raise ValueError("u must have at least one position, got length 0")
    if tuple(delta.shape) != (b, d, L):
        raise ValueError(f"delta must match u's shape {(b, d, L)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d, state) = ({d}, n), got {tuple(A.shape)}")
    if entering() and (A > 0).any():
        raise ValueError("A must be <= 0 (a stable, decaying state)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and tuple(t.shape) == (b, n, L):
            continue
        if t.dim() == 4 and t.shape[0] == b and t.shape[2:] == (n, L) and d % t.shape[1] == 0:
            continue
        raise ValueError(f"{name} must be (batch, state, length) = {(b, n, L)} or (batch, "
                         f"groups, state, length) with groups dividing {d}, "
                         f"got {tuple(t.shape)}")
    if D is not None and tuple(D.shape) != (d,):
        raise ValueError(f"D must be ({d},), got {tuple(D.shape)}")
    if delta_bias is not None and tuple(delta_bias.shape) != (d,):
        raise ValueError(f"delta_bias must be ({d},), got {tuple(delta_bias.shape)}")
    if z is not None and tuple(z.shape) != (b, d, L):
        raise ValueError(f"z must match u's shape {(b, d, L)}, got {tuple(z.shape)}")


def _per_channel(M, d):
    """(b, n, L) or (b, g, n, L) -> (b, d or 1, L, n) aligned with channels."""
    if M.dim() == 3:
        return M.transpose(1, 2)[:, None]
    g = M.shape[1]
    return M.repeat_interleave(d // g, dim=1).transpose(2, 3)


BACKENDS = ("torch", "compiled")


@functools.lru_cache(maxsize=None)
def compiled_scan_status() -> tuple:
    """(True, "") when the compiled (numba) scan can run here, else (False, why not)."""
    try:
        from attnarena.ops import scan_numba  # noqa: F401  (compiles lazily, on first use)
    except ImportError as error:
        return False, (f"numba is not installed ({error.name or error}); "
                       "pip install 'attnarena[fast]'")
    return True, ""


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, form="chunk",
                   chunk_size=16, backend="torch"):
    """Mamba's selective scan.

    Args:
        u, delta: (b, d, l).  A: (d, n), <= 0.  B, C: (b, n, l) or (b, g, n, l).
        D: (d,) skip connection.  z: (b, d, l) gate, output *= silu(z).
        delta_bias: (d,) added to delta; delta_softplus: apply softplus to delta.
        return_last_state: also return the state (b, d, n) after the last token.
        initial_state: (b, d, n) state to continue from.
        form: "chunk" or "recurrent" (reference); chunk_size: tokens per chunk.
        backend: "torch" (the forms above) or "compiled" (the numba kernel of
            ``ops.scan_numba``, a token loop over (batch, channel) pairs in parallel, exact
            like the reference; CPU tensors; ``form`` and ``chunk_size`` do not apply).

    Returns:
        y (b, d, l) in u's dtype, or (y, last_state) with ``return_last_state``.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if form not in ("chunk", "recurrent"):
        raise ValueError(f"unknown form {form!r}; valid forms: chunk, recurrent")
    check_chunk_size(chunk_size)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "compiled":
        available, why = compiled_scan_status()
        if not available:
            raise ValueError(f"the compiled scan cannot run: {why}")
        if u.device.type != "cpu":
            raise ValueError(f"the compiled scan runs on CPU tensors, got {u.device}")
    b, d, L = u.shape
    n = A.shape[1]
    if initial_state is not None:
        check_state(initial_state, (b, d, n))
    out_dtype = u.dtype
    dtype = compute_dtype(u.dtype)
    # contiguous inputs keep the chunk form's buffers in scan order (strided cumsums crawl)
    u, delta, A = u.to(dtype).contiguous(), delta.to(dtype).contiguous(), A.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    elif entering() and bool((delta < 0).any()):
        raise ValueError("delta (plus delta_bias) must be >= 0, a step size; got negative "
                         "values (pass delta_softplus=True to map raw values through softplus)")
    Bc = _per_channel(B.to(dtype), d).contiguous()  # (b, d|1, L, n)
    Cc = _per_channel(C.to(dtype), d).contiguous()
    x = u.new_zeros(b, d, n) if initial_state is None else initial_state.to(dtype)
    if backend == "compiled":
        from attnarena.ops.scan_numba import compiled_scan

        y, x = compiled_scan(u, delta, A.contiguous(), Bc, Cc, x.contiguous())
    elif form == "recurrent":
        y, x = _scan_recurrent(u, delta, A, Bc, Cc, x)
    else:
        y, x = _scan_chunked(u, delta, A, Bc, Cc, x, chunk_size)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(out_dtype)
    return (y, x) if return_last_state else y


def _scan_recurrent(u, delta, A, Bc, Cc, x):
    """The reference loop over tokens. Returns y (b, d, L) and the last state."""
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t, None]  # (b, d, 1)
        x = torch.exp(dt * A) * x + dt * Bc[:, :, t] * u[:, :, t, None]
        ys.append((x * Cc[:, :, t]).sum(-1))
    return torch.stack(ys, dim=-1), x


def _scan_chunked(u, delta, A, Bc, Cc, x, C):
    b, d, L = u.shape
    ys = []
    step = max(C, GROUP_TOKENS // C * C)
    # split once: a slice a step would give each its own full-size gradient (ops._blocks)
    for uc, dc, Bg, Cg in zip(u.split(step, 2), delta.split(step, 2),
                              Bc.split(step, 2), Cc.split(step, 2)):
        y, x = _scan_group(uc, dc, A, Bg, Cg, x, C)
        ys.append(y)
    return torch.cat(ys, dim=-1), x


def _scan_group(u, delta, A, Bc, Cc, x, C):
    """Chunks of one group at once; the (b, d, n) state is carried across them in order.
    Works in place on one (b, d, m, C, n) buffer to keep memory traffic low."""
    b, d, L = u.shape
    pad = (-L) % C
    if pad:  # padded steps: delta = 0, so no decay and no input
        u, delta = F.pad(u, (0, pad)), F.pad(delta, (0, pad))
        Bc, Cc = F.pad(Bc, (0, 0, 0, pad)), F.pad(Cc, (0, 0, 0, pad))
    m = (L + pad) // C
    n = A.shape[1]
    dt = delta.reshape(b, d, m, C, 1)
    Bm = Bc.reshape(*Bc.shape[:2], m, C, n)
    um = u.reshape(b, d, m, C, 1)
    # In place when no gradient is needed (the memory traffic is the cost on a CPU).
    inplace = not (torch.is_grad_enabled()
                   and any(t.requires_grad for t in (u, delta, A, Bc, Cc, x)))

    def apply(t, name, *args):
        return getattr(t, name + "_" if inplace else name)(*args)

    P = apply(dt * A[:, None, None, :], "cumsum", 3)  # (b, d, m, C, n) log decay so far
    end = P[:, :, :, -1].clone()  # (b, d, m, n)
    decay = P.exp()
    # From a zero state: exp(P_t) * sum_{j<=t} exp(-P_j) dt_j B_j u_j, built in P's buffer.
    acc = apply(apply(apply(P, "neg"), "clamp", None, FACTOR_LIMIT), "exp")
    acc = apply(apply(apply(apply(acc, "mul", dt), "mul", Bm), "mul", um), "cumsum", 3)
    last = decay[:, :, :, -1] * acc[:, :, :, -1]  # state at each chunk end, from zero
    strong = (end < -FACTOR_LIMIT).any(dim=-1)  # chunks that decay past exp(-60): stepped
    if tracing() or bool(strong.any()):
        idx = strong.nonzero(as_tuple=True)
        b_idx = (idx[0], idx[1] if Bm.shape[1] > 1 else torch.zeros_like(idx[1]), idx[2])
        stepped = _steps_from_zero(dt[idx] * A[idx[1]][:, None, :], dt[idx] * Bm[b_idx] * um[idx])
        last = last.index_put(idx, stepped[:, -1])
    end_decay = end.exp()
    starts = []
    # unbound once (see ops.gated): no zero-filled gradient as large as all chunks a step
    for decay_i, last_i in zip(end_decay.unbind(2), last.unbind(2)):
        starts.append(x)
        x = decay_i * x + last_i
    starts = torch.stack(starts, dim=2)[:, :, :, None]  # (b, d, m, 1, n)
    states = apply(apply(acc, "add", starts), "mul", decay)
    if tracing() or bool(strong.any()):
        states = states.index_put(idx, stepped + decay[idx] * starts[idx])
    y = (states * Cc.reshape(*Cc.shape[:2], m, C, n)).sum(-1)
    return y.reshape(b, d, m * C)[:, :, :L], x


def _steps_from_zero(log_a, inputs):
    """States of chunks (N, C, n) stepped token by token from zero: exact for any decay."""
    decay = log_a.exp()
    x = torch.zeros_like(inputs[:, 0])
    out = []
    for t in range(inputs.shape[1]):
        x = decay[:, t] * x + inputs[:, t]
        out.append(x)
    return torch.stack(out, dim=1)
