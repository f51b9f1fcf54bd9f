"""Mamba's selective scan compiled by numba (LLVM), forward and backward.

Each (batch, channel) pair is one sequential scan over time on its own contiguous (n,)
state, and the pairs run in parallel threads; the discretization (exp(delta A), delta B u)
is computed inside the scan, step by step, never as a (b, d, L, n) tensor. In float32 the
loops over the n state entries run in SIMD lanes, exp(delta A) included (``_fast_decay``).
The backward pass recomputes the pair's states into a local (L, n) buffer (no (b, d, L, n)
tensor is kept between the passes) and walks time in reverse. ``selective_scan`` uses this
kernel when numba is installed (the ``fast`` extra); the PyTorch forms stay as the reference
and the fallback.
"""
from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
import torch
from numba import prange


@numba.njit(inline="always")
def _exact_decay(dt, A_k, log2e):
    return math.exp(dt * A_k)


@numba.njit(inline="always", fastmath=True)
def _fast_decay(dt, A_k, log2e):
    """exp(dt A_k) for dt >= 0, A_k <= 0, in float32 arithmetic that vectorizes (no libm
    call): exp(x) = 2^-z, z = -x log2(e) = m + f, as 2^-f / 2^m with 2^-f = e^(-f ln 2) by
    its Taylor series about the middle of its range (relative error below 2e-7) and 2^m an
    integer shift; z is capped at 60 (exp(x) below 2^-60 ~ 1e-18 counts as 2^-60)."""
    z = min(dt * (-A_k) * log2e, np.float32(60.0))
    m = np.int64(z)
    s = np.float32(0.34657359) - (z - np.float32(m)) * np.float32(0.69314718)  # in (-0.35, 0.35]
    p = np.float32(1.0) + s * (np.float32(1.0) + s * (np.float32(0.5) + s * (
        np.float32(1.0 / 6) + s * (np.float32(1.0 / 24) + s * (np.float32(1.0 / 120) + s * (
            np.float32(1.0 / 720) + s * np.float32(1.0 / 5040)))))))
    return p * np.float32(0.70710678) / np.float32(np.int64(1) << m)  # e^-0.3466 = 2^-0.5


@numba.njit(inline="always")
def _sizes(u, A, B):
    """(b, d, L, n, groups, log2(e) in the inputs' dtype) of a scan's inputs."""
    b, d, L = u.shape
    return b, d, L, A.shape[1], B.shape[1], u.dtype.type(1.4426950408889634)


def _forward_kernel(decay):
    def forward(u, delta, A, B, C, x0, y, last):
        b, d, L, n, G, log2e = _sizes(u, A, B)
        for pair in prange(b * d):
            i, c = pair // d, pair % d
            g = c * G // d
            x = x0[i, c].copy()  # the pair's state, contiguous
            a = np.empty(n, dtype=u.dtype)  # exp(dt A_k) of the current step
            for t in range(L):
                dt = delta[i, c, t]
                du = dt * u[i, c, t]
                for k in range(n):  # the discretization, fused: no (b, d, L, n) tensor
                    a[k] = decay(dt, A[c, k], log2e)
                acc = u.dtype.type(0.0)
                for k in range(n):
                    x[k] = a[k] * x[k] + du * B[i, g, t, k]
                    acc += C[i, g, t, k] * x[k]
                y[i, c, t] = acc
            last[i, c] = x
    return forward


def _backward_kernel(decay):
    def backward(u, delta, A, B, C, x0, gy, glast, parts, gu, gdelta, gA, gB, gC, gx0):
        """Gradients of y (b, d, L) and the last state into u, delta, A, B, C and x0.
        Channels are split into ``parts`` strides, one per thread, so that the B and C
        gradients shared by a group of channels are summed without races (gB, gC: (b,
        parts, L, n), summed by the caller); gA is (b, d, n), summed over the batch by the
        caller."""
        b, d, L, n, G, log2e = _sizes(u, A, B)
        for job in prange(b * parts):
            i, p = job // parts, job % parts
            xs = np.empty((L, n), dtype=u.dtype)
            gx = np.empty(n, dtype=u.dtype)
            a = np.empty(n, dtype=u.dtype)
            for c in range(p, d, parts):
                g = c * G // d
                slot = g if G == d else p  # a channel's own B/C, or the thread's partial sum
                for k in range(n):  # recompute the states
                    gx[k] = x0[i, c, k]
                for t in range(L):
                    dt = delta[i, c, t]
                    du = dt * u[i, c, t]
                    for k in range(n):
                        a[k] = decay(dt, A[c, k], log2e)
                    for k in range(n):
                        gx[k] = a[k] * gx[k] + du * B[i, g, t, k]
                        xs[t, k] = gx[k]
                for k in range(n):
                    gx[k] = glast[i, c, k]
                for t in range(L - 1, -1, -1):
                    dt, ut, gyt = delta[i, c, t], u[i, c, t], gy[i, c, t]
                    for k in range(n):
                        a[k] = decay(dt, A[c, k], log2e)
                    g_dt, g_u = u.dtype.type(0.0), u.dtype.type(0.0)
                    for k in range(n):
                        total = gx[k] + C[i, g, t, k] * gyt  # d loss / d x_t
                        gC[i, slot, t, k] += gyt * xs[t, k]
                        previous = xs[t - 1, k] if t > 0 else x0[i, c, k]
                        g_a = total * previous * a[k]  # through exp(dt A): d/d(dt A)
                        g_dt += g_a * A[c, k] + total * B[i, g, t, k] * ut
                        gA[i, c, k] += g_a * dt
                        gB[i, slot, t, k] += total * dt * ut
                        g_u += total * dt * B[i, g, t, k]
                        gx[k] = total * a[k]
                    gdelta[i, c, t] = g_dt
                    gu[i, c, t] = g_u
                for k in range(n):
                    gx0[i, c, k] = gx[k]
    return backward


# The exact kernels (libm's exp, IEEE arithmetic) for float64 and for any delta; the fast
# ones for float32 with delta >= 0, where exp(dt A) vectorizes (numba's LLVM has no vector
# exp of its own) and fastmath lets the loops over the state run in SIMD lanes.
_forward = numba.njit(parallel=True, cache=True)(_forward_kernel(_exact_decay))
_backward = numba.njit(parallel=True, cache=True)(_backward_kernel(_exact_decay))
_forward_fast = numba.njit(parallel=True, cache=True, fastmath=True)(
    _forward_kernel(_fast_decay))
_backward_fast = numba.njit(parallel=True, cache=True, fastmath=True)(
    _backward_kernel(_fast_decay))


def _kernels(u, delta):
    if u.dtype == torch.float32 and bool((delta >= 0).all()):
        return _forward_fast, _backward_fast
    return _forward, _backward


def _array(t):
    return t.detach().contiguous().numpy()


@contextlib.contextmanager
def _torch_threads():
    """Run a kernel on as many threads as torch is told to use (a job of the arena runs
    with one; numba's own default is every core), and leave torch's count as it was:
    numba's OpenMP pool, started on first use, sets the OpenMP runtime torch shares to
    every core, after which every torch operation ran on all of them."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class CompiledScan(torch.autograd.Function):
    """(u, delta (b, d, L), A (d, n), B, C (b, 1 or d, L, n), x0 (b, d, n)) ->
    (y (b, d, L), last state (b, d, n)), on CPU float32 or float64 tensors."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, x0):
        b, d, L = u.shape
        y = torch.empty(b, d, L, dtype=u.dtype)
        last = torch.empty(b, d, A.shape[1], dtype=u.dtype)
        forward, _ = _kernels(u, delta)
        with _torch_threads():
            forward(_array(u), _array(delta), _array(A), _array(B), _array(C), _array(x0),
                    y.numpy(), last.numpy())
        ctx.save_for_backward(u, delta, A, B, C, x0)
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, x0 = ctx.saved_tensors
        b, d, L = u.shape
        n, G = A.shape[1], B.shape[1]
        gy = torch.zeros_like(u) if gy is None else gy
        glast = torch.zeros_like(x0) if glast is None else glast
        with _torch_threads():
            parts = max(1, min(d, numba.get_num_threads()))
            slots = d if G == d else parts
            gu, gdelta = torch.empty_like(u), torch.empty_like(u)
            gA = torch.zeros(b, d, n, dtype=u.dtype)
            gB = torch.zeros(b, slots, L, n, dtype=u.dtype)
            gC = torch.zeros(b, slots, L, n, dtype=u.dtype)
            gx0 = torch.empty_like(x0)
            _, backward = _kernels(u, delta)
            backward(_array(u), _array(delta), _array(A), _array(B), _array(C), _array(x0),
                     _array(gy.to(u.dtype)), _array(glast.to(u.dtype)), parts, gu.numpy(),
                     gdelta.numpy(), gA.numpy(), gB.numpy(), gC.numpy(), gx0.numpy())
        if G != d:
            gB, gC = gB.sum(1, keepdim=True), gC.sum(1, keepdim=True)
        return gu, gdelta, gA.sum(0), gB, gC, gx0


def compiled_scan(u, delta, A, B, C, x0):
    """The selective scan's core recurrence by the compiled kernel (see ``CompiledScan``)."""
    return CompiledScan.apply(u, delta, A, B, C, x0)
