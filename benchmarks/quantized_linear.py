"""Where torchao's int8 pays on this CPU: one linear layer (width -> 4 x width) at several
widths, float against each torchao method, timed side by side (median of repeats) on a
batch of ``tokens`` rows.

    python benchmarks/quantized_linear.py [--widths 64,256,1024,2048] [--tokens 4096]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from attnarena.compress.recipe import make_step
from attnarena.compress.quantize import torchao_quantize


def median_ms(layer, x, repeats):
    with torch.no_grad():
        layer(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            layer(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256,1024,2048")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    methods = ["int8_weight", "int8_dynamic", "int4_weight", "float8_weight"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.tokens} tokens; ms (speed-up over float)")
    print("| width | float | " + " | ".join(methods) + " |")
    print("|---" * (2 + len(methods)) + "|")
    for width in (int(w) for w in args.widths.split(",")):
        torch.manual_seed(0)
        layer = nn.Linear(width, 4 * width).eval()
        x = torch.randn(args.tokens, width)
        quantized = {}
        for name in methods:
            q = copy.deepcopy(nn.Sequential(layer))
            torchao_quantize(q, make_step(name).config)
            quantized[name] = q
        # forward then reverse order, the faster of the two medians of each
        order = [("float", nn.Sequential(layer))] + list(quantized.items())
        first = {n: median_ms(m, x, args.repeats) for n, m in order}
        second = {n: median_ms(m, x, args.repeats) for n, m in reversed(order)}
        best = {n: min(first[n], second[n]) for n, _ in order}
        cells = [f"{best[n]:.2f} ({best['float'] / best[n]:.2f}x)" for n in methods]
        print(f"| {width} | {best['float']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
