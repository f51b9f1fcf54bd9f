"""Op-level timing of every form of the recurrent kernels, side by side in one run.

Usage: python benchmarks/recurrent_forms.py [--length 16384] [--heads 4] [--head-dim 64]

Prints, per kernel, the median time of each form, the chunk form's speed-up over the
recurrent form and over exact causal attention at the same shape (SDPA with
``is_causal=True``, timed first in the same run), and the chunk form's arithmetic rate
(matmul FLOPs it performs / time) next to this machine's float32 matmul throughput
measured in the same run. About 30 s at
the defaults on an idle 2-core AMD EPYC; each kernel's row prints as soon as it is timed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from attnarena import ops
from attnarena.arena.measure.environment import environment
from attnarena.arena.measure.speed import matmul_gflops


def timed_range(fn, repeats):
    """Median, min and max (seconds) of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def timed(fn, repeats):
    return timed_range(fn, repeats)[0]


def timed_sdpa(B, H, L, D, repeats):
    """Median seconds of exact causal attention (SDPA, ``is_causal=True``) at this shape."""
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    return timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats)


def cases(B, H, L, D, N):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    kn = F.normalize(k, dim=-1)
    log_g = -torch.rand(B, H, L, D, generator=g) * 0.1
    log_a = -torch.rand(B, H, L, generator=g) * 0.1
    beta = torch.rand(B, H, L, generator=g)
    d = H * D * 2  # Mamba's inner width for model width H * D, expand 2
    u, delta = torch.randn(B, d, L, generator=g), torch.rand(B, d, L, generator=g) * 0.1
    A = -torch.arange(1, N + 1).float().repeat(d, 1)
    Bm, Cm = torch.randn(B, N, L, generator=g), torch.randn(B, N, L, generator=g)
    C = 64
    # Matmul FLOPs of the chunk forms (per batch and head): intra-chunk scores and their
    # product with values, chunk state writes and reads.
    linear_flops = B * H * 2 * L * (C * 2 * D + 2 * D * D)
    delta_flops = B * H * 2 * L * (C * 2 * D + 2 * D * D + 3 * C * D + C * C / 6 + D * D)
    return {
        "linear_attention": (lambda form: ops.linear_attention(q.abs(), k.abs(), v, causal=True,
                                                               form=form), linear_flops),
        "retention": (lambda form: ops.retention(q, k, v, log_decay=torch.full((H,), -0.05),
                                                 form=form), linear_flops),
        "scalar_gated": (lambda form: ops.scalar_gated(q, k, v, log_a=log_a, form=form),
                         linear_flops),
        "gla": (lambda form: ops.gla(q, k, v, log_g=log_g, form=form), linear_flops),
        "delta_rule": (lambda form: ops.delta_rule(q, kn, v, beta=beta, form=form), delta_flops),
        "gated_delta_rule": (lambda form: ops.gated_delta_rule(q, kn, v, beta=beta,
                                                               log_alpha=log_a, form=form),
                             delta_flops),
        "mlstm": (lambda form: ops.mlstm(q, k, v, input_gate=log_a, forget_gate=log_a + 3,
                                         form=form), linear_flops),
        "selective_scan": (lambda form: ops.selective_scan(u, delta, A, Bm, Cm, form=form),
                           None),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--state", type=int, default=16, help="Mamba's state size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    env = environment()
    peak = matmul_gflops()
    print(f"{env['hardware']}, {env['threads']} threads, torch {env['torch']}; "
          f"float32 matmul {peak:.1f} GFLOP/s")
    print(f"B={args.batch} H={args.heads} L={args.length} D={args.head_dim} "
          f"(Mamba: d={2 * args.heads * args.head_dim}, N={args.state}), causal, float32")
    with torch.no_grad():
        sdpa = timed_sdpa(args.batch, args.heads, args.length, args.head_dim, args.repeats)
        print(f"SDPA (is_causal=True): {sdpa * 1e3:.1f} ms")
        print(f"{'kernel':<18} {'chunk ms':>9} {'recurrent ms':>13} {'speed-up':>9} "
              f"{'vs SDPA':>8} {'chunk GFLOP/s':>14} {'of matmul':>10}")
        for name, (run, flops) in cases(args.batch, args.heads, args.length, args.head_dim,
                                        args.state).items():
            print(f"{name:<18} timing...", end="\r", flush=True)
            chunk = timed(lambda: run("chunk"), args.repeats)
            recurrent = timed(lambda: run("recurrent"), max(1, args.repeats - 2))
            rate = "-" if flops is None else f"{flops / chunk / 1e9:.1f}"
            share = "-" if flops is None else f"{flops / chunk / 1e9 / peak:.0%}"
            print(f"{name:<18} {chunk * 1e3:9.1f} {recurrent * 1e3:13.1f} "
                  f"{recurrent / chunk:8.1f}x {sdpa / chunk:7.2f}x {rate:>14} {share:>10}",
                  flush=True)


if __name__ == "__main__":
    main()
