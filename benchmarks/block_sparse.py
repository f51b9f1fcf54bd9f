"""The sparse-pattern kernels against SDPA and against the dense masked form they replace,
side by side in one run (noncausal, the defaults of the mechanisms).

Usage: python benchmarks/block_sparse.py [--lengths 4096,16384,65536] [--dense-up-to 16384]

Per length: the median time and peak memory (on CPU, the peak resident memory during the
call) of torch's SDPA (exact softmax over all keys), of each pattern's block-sparse kernel
(``ops.sparse``), and of the dense masked reference (``ops.pattern_attention``) up to
``--dense-up-to`` (its L x L mask alone is 1 GB at 32K). Also prints the matmul throughput
measured in the same run.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from attnarena.arena.measure.environment import environment
from attnarena.arena.measure.memory import PeakMemory
from attnarena.arena.measure.speed import matmul_gflops
from attnarena.ops import sparse as S
from recurrent_forms import timed  # noqa: E402  (the script's own folder)

PATTERNS = {  # the mixers' default options
    "sparse fixed (block 32, summary 4)": (
        lambda L: S.fixed_pattern(L, 32, 4), lambda q, k, v: S.fixed_attention(q, k, v, 32, 4)),
    "sparse strided (block 32)": (
        lambda L: S.strided_pattern(L, 32), lambda q, k, v: S.strided_attention(q, k, v, 32)),
    "longformer (window 64, 1 global)": (
        lambda L: S.longformer_pattern(L, 64, 1),
        lambda q, k, v: S.longformer_attention(q, k, v, 64, 1)),
    "bigbird (block 16, 1 global, 2 random)": (
        lambda L: S.bigbird_pattern(L, 16, 1, 2, 0),
        lambda q, k, v: S.bigbird_attention(q, k, v, 16, 1, 2, 0)),
}


def measure(fn, repeats):
    with torch.no_grad():
        with PeakMemory("cpu") as memory:
            fn()
        seconds = timed(fn, repeats)
    return seconds * 1e3, (memory.peak_bytes or 0) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4096,16384,65536")
    parser.add_argument("--dense-up-to", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = environment("cpu")
    print(f"noncausal, batch 1, 4 heads x 64, float32, {env['hardware']}, {env['threads']} "
          f"threads, torch {env['torch']}; matmul {matmul_gflops():.1f} GFLOP/s")
    print(f"{'L':>6}  {'kernel':<40} {'ms':>10} {'peak MiB':>9} {'vs SDPA':>8}")
    for L in map(int, args.lengths.split(",")):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 4, L, 64, generator=g) for _ in range(3))
        sdpa_ms, sdpa_mb = measure(lambda: F.scaled_dot_product_attention(q, k, v),
                                   args.repeats)
        print(f"{L:>6}  {'SDPA (exact, all keys)':<40} {sdpa_ms:10.1f} {sdpa_mb:9.1f}")
        for name, (pattern, kernel) in PATTERNS.items():
            ms, mb = measure(lambda: kernel(q, k, v), args.repeats)
            print(f"{L:>6}  {name:<40} {ms:10.1f} {mb:9.1f} {sdpa_ms / ms:7.1f}x", flush=True)
            if L <= args.dense_up_to:
                mask = pattern(L)
                dense_ms, dense_mb = measure(
                    lambda: S.pattern_attention(q, k, v, mask), args.repeats)
                print(f"{L:>6}    {'dense masked form (before)':<38} {dense_ms:10.1f} "
                      f"{dense_mb:9.1f} {sdpa_ms / dense_ms:7.1f}x", flush=True)


if __name__ == "__main__":
    main()
