"""The candidates for Mamba's selective scan, side by side in one run: the PyTorch
reference loop, the PyTorch chunk form, the numba kernel (``backend="compiled"``), the
same kernel with libm's exp (no SIMD over the state) and ``torch.compile`` of the chunk
form; forward, and forward + backward.

Usage: python benchmarks/selective_scan.py [--length 16384] [--channels 256] [--state 16]
       [--no-compile]

``torch.compile`` is timed after its first (compiling) call, whose time is printed apart;
``--no-compile`` leaves it out. Reference-loop times come from fewer repeats (it is the
slowest). Every candidate's output is checked against the reference loop's first. Times:
median (min-max) of ``--repeats`` calls after a warm-up call (the numba kernels'
compilation, or their cache's load, stays out).
"""
from __future__ import annotations

import argparse
import time

import torch

from attnarena import ops
from attnarena.arena.measure.environment import environment

from recurrent_forms import timed_range as timed  # noqa: E402  (the script's own folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    b, d, L, n = 1, args.channels, args.length, args.state
    u = torch.randn(b, d, L, generator=g)
    delta = torch.rand(b, d, L, generator=g) * 0.1
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B, C = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
    env = environment("cpu")
    print(f"selective scan, b={b} d={d} L={L} n={n}, float32, {env['hardware']}, "
          f"{env['threads']} threads, torch {env['torch']}")

    def scan(**kw):
        return lambda *a: ops.selective_scan(*a, return_last_state=True, **kw)

    candidates = {"reference loop (torch)": scan(form="recurrent"),
                  "chunk form (torch)": scan(form="chunk")}
    available, why = ops.ssm.compiled_scan_status()
    if available:
        candidates["numba kernel"] = scan(backend="compiled")
        # the same kernel with libm's exp and no fastmath (what float64 runs): the loops
        # over the state do not vectorize, as before they did
        candidates["numba kernel, libm exp"] = scan(backend="compiled")
    else:
        print(f"numba kernel: not run ({why})")
    if not args.no_compile:
        start = time.perf_counter()
        compiled = torch.compile(ops.ssm._scan_chunked)

        def via_compile(u, delta, A, B, C):
            Bc = B.transpose(1, 2)[:, None].contiguous()
            Cc = C.transpose(1, 2)[:, None].contiguous()
            return compiled(u, delta, A, Bc, Cc, u.new_zeros(b, d, n), 16)

        try:
            with torch.no_grad():
                via_compile(u, delta, A, B, C)
            print(f"torch.compile: first call (compiling) {time.perf_counter() - start:.1f} s")
            candidates["torch.compile(chunk form)"] = via_compile
        except Exception as error:  # no compiler, or a graph it cannot take
            print(f"torch.compile: not run ({type(error).__name__}: {str(error)[:200]})")
    with torch.no_grad():
        reference = candidates["reference loop (torch)"](u, delta, A, B, C)[0]
    rows = []
    for name, fn in candidates.items():
        exact = "libm" in name
        if exact:
            from attnarena.ops import scan_numba

            vectorized = scan_numba._kernels
            scan_numba._kernels = lambda u, delta: (scan_numba._forward, scan_numba._backward)
        repeats = 1 if "reference" in name else args.repeats
        with torch.no_grad():
            out = fn(u, delta, A, B, C)[0]
            error = float((out - reference).abs().max() / reference.abs().max())
            fwd = timed(lambda: fn(u, delta, A, B, C), repeats)
        inputs = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C)]

        def both():
            y, last = fn(*inputs)
            torch.autograd.grad(y.square().sum() + last.sum(), inputs)

        try:
            fwdbwd = timed(both, repeats)
        except Exception as error_bwd:
            fwdbwd = (float("nan"),) * 3
            print(f"{name}: backward failed ({type(error_bwd).__name__})")
        if exact:
            scan_numba._kernels = vectorized
        rows.append((name, fwd, fwdbwd, error))
        def ms(t):
            return f"{t[0] * 1e3:8.1f} ms ({t[1] * 1e3:.1f}-{t[2] * 1e3:.1f})"

        print(f"{name:<28} fwd {ms(fwd)}   fwd+bwd {ms(fwdbwd)}   "
              f"max rel. diff to reference {error:.1e}", flush=True)
    base_fwd, base_both = rows[0][1][0], rows[0][2][0]
    print("speed-up over the reference loop (medians):")
    for name, fwd, fwdbwd, _ in rows[1:]:
        print(f"  {name:<28} fwd {base_fwd / fwd[0]:6.1f}x   fwd+bwd {base_both / fwdbwd[0]:6.1f}x")


if __name__ == "__main__":
    main()
