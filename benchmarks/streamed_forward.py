"""Time and peak memory of an inference forward (no gradients) with the fixed-state
mechanisms run whole and run in pieces of ``stream_tokens`` (``Mixer.streams``), softmax
(SDPA) beside them, in one run:

    python benchmarks/streamed_forward.py [--lengths 1024,4096,16384] [--mixers linear,gla]

Batch 1, 4 heads of 64, float32, causal, one thread; each case through the speed sweep's
own measurement (``attnarena speed``: a warm-up call, then bursts of calls, median and
quartiles), so its figures read like the sweep's.
"""
from __future__ import annotations

import argparse

import torch

from attnarena.arena.measure.speed import SpeedConfig, measure_case
from attnarena.mixers.base import Mixer
from attnarena.options import MixerSpec

PIECES = Mixer.stream_tokens
WHOLE = 1 << 40  # longer than any sequence: never in pieces
MIXERS = ["linear", "gla", "retention", "deltanet", "gated_deltanet", "mamba2", "mamba"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1024,4096,16384")
    p.add_argument("--mixers", default=",".join(MIXERS))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lengths = [int(n) for n in args.lengths.split(",")]
    cfg = SpeedConfig(mixers=["softmax"], lengths=lengths, pass_="fwd", repeats=args.repeats)
    print(f"| mechanism | L | whole: ms (q1-q3) | whole: MiB | in pieces of {PIECES}: "
          "ms (q1-q3) | in pieces: MiB |")
    print("|---|---|---|---|---|---|")

    def cell(row):
        if row["status"] != "ok":
            return row["status"], "-"
        return (f"{row['median_ms']:.1f} ({row['q1_ms']:.1f}-{row['q3_ms']:.1f})",
                f"{row['peak_mem_mb']:.1f}")

    for n in lengths:
        soft = cell(measure_case(MixerSpec.parse("softmax"), n, cfg))
        print(f"| softmax (SDPA) | {n} | {soft[0]} | {soft[1]} | | |")
        for name in args.mixers.split(","):
            spec = MixerSpec.parse(name)
            cells = []
            for pieces in (WHOLE, PIECES):  # streaming starts past 2 * stream_tokens
                Mixer.stream_tokens = pieces
                cells += cell(measure_case(spec, n, cfg))
            print(f"| {name} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
