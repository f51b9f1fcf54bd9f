"""Time and peak memory of the fixed-state mechanisms run whole and run in pieces
(``Mixer.streams``), softmax (SDPA) beside them, in one run: an inference forward (no
gradients; pieces of each mechanism's ``stream_tokens``) or a training forward + backward (pieces of
``train_rows`` rows, batch x tokens, recomputed in the backward pass):

    python benchmarks/streamed_forward.py [--lengths 1024,4096,16384] [--mixers linear,gla]
    python benchmarks/streamed_forward.py --pass fwdbwd --batch 8 --threads 2 \\
        --lengths 512,2048,8192

4 heads of 64, float32, causal; batch 1 and one thread unless given. Each case goes
through the speed sweep's own measurement (``attnarena speed``: a warm-up call, then bursts
of calls, median and quartiles), so its figures read like the sweep's; a mechanism's two
cases run one after the other.
"""
from __future__ import annotations

import argparse

import torch

from attnarena.arena.measure.speed import SpeedConfig, measure_case
from attnarena.mixers.pieces import tokens_per_piece
from attnarena.options import MixerSpec
from attnarena.registry import create_mixer

WHOLE = 1 << 40  # longer than any sequence: never in pieces
_ABSENT = object()  # a class that inherits the attribute
MIXERS = ["linear", "gla", "retention", "deltanet", "gated_deltanet", "mamba2", "mamba"]
SIZE = {"fwd": "stream_tokens", "fwdbwd": "train_rows"}  # what sets each pass's pieces


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1024,4096,16384")
    p.add_argument("--mixers", default=",".join(MIXERS))
    p.add_argument("--pass", dest="pass_", choices=sorted(SIZE), default="fwd")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-rows", type=int, default=2048,
                   help="rows (batch x tokens) of a training piece (the option train_rows)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    cfg = SpeedConfig(mixers=["softmax"], lengths=lengths, pass_=args.pass_,
                      batch=args.batch, repeats=args.repeats)
    attribute = SIZE[args.pass_]
    print(f"{args.pass_}, batch {args.batch}, {args.threads} thread(s)\n")
    print("| mechanism | L | whole: ms (q1-q3) | whole: MiB | piece tokens | in pieces: "
          "ms (q1-q3) | in pieces: MiB |")
    print("|---|---|---|---|---|---|---|")

    def cell(row):
        if row["status"] != "ok":
            return row["status"], "-"
        return (f"{row['median_ms']:.1f} ({row['q1_ms']:.1f}-{row['q3_ms']:.1f})",
                f"{row['peak_mem_mb']:.1f}")

    for n in lengths:
        soft = cell(measure_case(MixerSpec.parse("softmax"), n, cfg))
        print(f"| softmax (SDPA) | {n} | {soft[0]} | {soft[1]} | | | |", flush=True)
        for name in args.mixers.split(","):
            spec = MixerSpec.parse(name)
            # the mechanism's own class: a class may size its pieces itself (Mamba's
            # wider intermediates take pieces of fewer tokens)
            cls = type(create_mixer(spec.name, dim=64, heads=1, causal=True))
            own = cls.__dict__.get(attribute, _ABSENT)
            pieces = cls.stream_tokens if args.pass_ == "fwd" else args.train_rows
            tokens = pieces if args.pass_ == "fwd" else tokens_per_piece(pieces, args.batch)
            cells = []
            try:
                for size in (WHOLE, pieces):  # pieces start past 2 x the piece length
                    setattr(cls, attribute, size)
                    cells += cell(measure_case(spec, n, cfg))
            finally:
                if own is _ABSENT:
                    delattr(cls, attribute)
                else:
                    setattr(cls, attribute, own)
            print(f"| {name} | {n} | {cells[0]} | {cells[1]} | {tokens} | {cells[2]} | "
                  f"{cells[3]} |", flush=True)


if __name__ == "__main__":
    main()
