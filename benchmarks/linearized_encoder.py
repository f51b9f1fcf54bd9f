"""Encoder time and peak memory against length: all-MiniLM-L6-v2 as shipped (softmax,
transformers' SDPA path) beside the same model with every attention swapped for arena
mechanisms, side by side in one run. Speed does not depend on training, so the swapped
models keep their initial new parameters. Needs the pretrained extra.

Usage: python benchmarks/linearized_encoder.py [--lengths 64,128,256,512] [--batch 8]
       [--mixers softmax,hedgehog,linear,performer,cosine,gla,lolcats:window=8]
"""
from __future__ import annotations

import argparse
import copy

from attnarena.arena.measure.environment import environment
from attnarena.arena.deploy.linearize import encoder_speed
from attnarena.options import MixerSpec
from attnarena.pretrained import load_pretrained, swap_attention


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,128,256,512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mixers",
                        default="softmax,hedgehog,linear,performer,cosine,gla,lolcats:window=8")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    env = environment("cpu")
    print(f"# {env['hardware']}, {env['threads']} threads, torch {env['torch']}, batch "
          f"{args.batch}, float32; median ms / peak MiB of one encoder forward")
    original = load_pretrained("minilm")
    models = {"original (transformers SDPA)": original}
    for spec in map(MixerSpec.parse, args.mixers.split(",")):
        model = copy.deepcopy(original)
        swap_attention(model.model, spec.name, **dict(spec.options))
        models[spec.label] = model
    header = " | ".join(f"L={n} ms | L={n} MiB" for n in lengths)
    print(f"| model | {header} |")
    print("|---" * (1 + 2 * len(lengths)) + "|")
    for name, model in models.items():
        speed = encoder_speed(model, lengths, args.batch, repeats=args.repeats)
        cells = " | ".join(f"{speed[str(n)]['ms']:.1f} | {speed[str(n)]['peak_mb'] or 0:.0f}"
                           for n in lengths)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
