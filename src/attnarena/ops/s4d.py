"""Diagonal state space layer S4D (Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models").

Per channel h, N complex modes, zero-order hold with step dt:
    x_t = exp(dt A) x_{t-1} + ((exp(dt A) - 1) / A) u_t ,   y_t = 2 Re(C . x_t) + D u_t
(B is folded into C, the conjugate modes into the factor 2).

Forms: ``parallel`` (convolution with the kernel K_l = 2 Re(C (exp(dt A) - 1) / A
exp(dt A)^l), by FFT in O(L log L)) and ``recurrent`` (the reference loop, and decoding).
"""
from __future__ import annotations

import torch

from attnarena._validate import entering
from attnarena.ops._checks import check_state


def _check(u, A, C, log_dt, D):
    if not isinstance(u, torch.Tensor) or not u.is_floating_point() or u.dim() != 3:
        raise ValueError(f"u must be a real float tensor (batch, channels, length), got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u)}")
    H = u.shape[1]
    for name, t in (("A", A), ("C", C)):
        if not isinstance(t, torch.Tensor) or not t.is_complex() or t.dim() != 2 \
                or t.shape[0] != H:
            raise ValueError(f"{name} must be a complex tensor (channels={H}, modes)")
    if A.shape != C.shape:
        raise ValueError(f"A and C must share a shape, got {tuple(A.shape)}, {tuple(C.shape)}")
    if entering() and (A.real >= 0).any():
        raise ValueError("A must have a negative real part (a stable system)")
    if tuple(log_dt.shape) != (H,):
        raise ValueError(f"log_dt must be ({H},), got {tuple(log_dt.shape)}")
    if D is not None and tuple(D.shape) != (H,):
        raise ValueError(f"D must be ({H},), got {tuple(D.shape)}")


def s4d(u, A, C, log_dt, D=None, *, form="parallel", initial_state=None, return_state=False):
    """Run S4D over u.

    Args:
        u: (B, H, L) real input, one SSM per channel.
        A: (H, N) complex, negative real part.  C: (H, N) complex.  log_dt: (H,).
        D: (H,) skip connection.
        form: "parallel" (FFT convolution) or "recurrent" (reference).
        initial_state: (B, H, N) complex state to continue from.

    Returns:
        y (B, H, L) in u's dtype, or (y, state (B, H, N) complex) with ``return_state``.
    """
    _check(u, A, C, log_dt, D)
    if form not in ("parallel", "recurrent"):
        raise ValueError(f"unknown form {form!r}; valid forms: parallel, recurrent")
    B_, H, L = u.shape
    N = A.shape[1]
    cdtype = torch.complex128 if u.dtype == torch.float64 else torch.complex64
    rdtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    out_dtype = u.dtype
    u = u.to(rdtype)
    dtA = log_dt.to(rdtype).exp()[:, None] * A.to(cdtype)  # (H, N)
    decay = dtA.exp()
    gain = (decay - 1) / A.to(cdtype)  # ZOH input matrix
    C = C.to(cdtype)
    if initial_state is not None:
        check_state(initial_state, (B_, H, N))
        state = initial_state.to(cdtype)
    else:
        state = torch.zeros(B_, H, N, dtype=cdtype, device=u.device)
    if form == "recurrent":
        outputs = []
        for t in range(L):
            state = decay * state + gain * u[:, :, t, None]
            outputs.append(2 * (C * state).sum(-1).real)
        y = torch.stack(outputs, dim=-1)
    else:
        kernel = 2 * _power_sums(C * gain, dtA, L).real  # (H, L)
        n_fft = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(kernel, n=n_fft),
                            n=n_fft)[..., :L]
        if initial_state is not None:  # the carried state decays into every output
            y = y + 2 * _power_sums(C * state * decay, dtA, L).real
        # state after the last token: decay^L x0 + gain * sum_l decay^l u_(L-1-l)
        state = state * torch.exp(dtA * L) + gain * _weighted_power_sums(u.flip(-1), dtA)
    if D is not None:
        y = y + D.to(rdtype)[:, None] * u
    y = y.to(out_dtype)
    return (y, state) if return_state else y


BLOCK = 128


def _powers(dtA, exponents):
    """exp(dtA * e) for each exponent: (H, N) and (E,) -> (H, N, E)."""
    return torch.exp(dtA[..., None] * exponents.to(dtA.real.dtype))


def _power_sums(coef, dtA, L):
    """sum_n coef[..., h, n] z[h, n]^l for l < L, with z = exp(dtA): (..., H, L) complex.

    Powers split as z^(l0 + j) = z^l0 z^j with j < BLOCK, so only H N (BLOCK + L / BLOCK)
    exponentials are taken and the O(H N L) sum is a batched matmul.
    """
    b = min(BLOCK, L)
    nb = -(-L // b)
    within = _powers(dtA, torch.arange(b, device=dtA.device))  # (H, N, b)
    starts = _powers(dtA, torch.arange(nb, device=dtA.device) * b).transpose(-1, -2)  # (H, nb, N)
    out = (coef[..., None, :] * starts) @ within  # (..., H, nb, b)
    return out.reshape(*out.shape[:-2], nb * b)[..., :L]


def _weighted_power_sums(w, dtA):
    """sum_l w[..., h, l] z[h, n]^l: (B, H, L) real weights -> (B, H, N) complex."""
    L = w.shape[-1]
    b = min(BLOCK, L)
    nb = -(-L // b)
    within = _powers(dtA, torch.arange(b, device=dtA.device))  # (H, N, b)
    starts = _powers(dtA, torch.arange(nb, device=dtA.device) * b).transpose(-1, -2)  # (H, nb, N)
    blocks = torch.nn.functional.pad(w, (0, nb * b - L)).reshape(*w.shape[:-1], nb, b)
    partial = blocks.to(within.dtype) @ within.transpose(-1, -2)  # (B, H, nb, N)
    return (partial * starts).sum(-2)
