"""Decoding SmolLM2-135M: the original (softmax through SDPA with a key/value cache) beside
a linearized copy (a fixed-size state per layer), side by side in one run: prefill time,
decoding tokens/s for ``--new`` tokens after prompts of each length, batch 1 and 8, the
decoding state's size, and peak memory above the process's size before the call: of the
prefill, and of the decoding after it (what the state, the cache and each step hold; the
prefill's passing activations excluded). Prompts are held-out text.

Speed does not depend on the trained values, so without ``--linearized DIR`` (a model saved
by ``attnarena linearize --model smollm2``) the linearized architecture is built from the
original's weights. Each cell is timed ``--repeats`` times, round-robin between the two
models; the table gives the median and, with more than one repeat, the range.

A prompt plus the new tokens must fit the model's context of 8,192: the longest prompt is
8,128 tokens.

Usage: python benchmarks/decode_smollm2.py [--lengths 512,2048,8128] [--batches 1,8]
       [--new 64] [--repeats 3] [--linearized DIR] [--mixer lolcats] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from attnarena.arena.measure.environment import environment
from attnarena.arena.measure.memory import PeakMemory
from attnarena.pretrained import load_pretrained
from attnarena.pretrained.corpus import document_split
from attnarena.pretrained.decoder_subject import token_stream
from attnarena.pretrained.llama import swap_decoder_attention


def prompts(tokenizer, length, batch):
    """``batch`` windows of ``length`` held-out tokens (the stream repeated if short)."""
    stream = token_stream(tokenizer, document_split("test"))
    need = length * batch
    stream = stream.repeat(-(-need // stream.numel()))
    return stream[:need].view(batch, length)


def measure(model, ids, new):
    prefill_peak = []
    with PeakMemory("cpu") as memory:
        result = model.generate(None, new, ids=ids, stop_at_eos=False,
                                after_prefill=lambda: prefill_peak.append(memory.restart()))

    def mib(value):
        return None if value is None else value / 2**20

    return {"prefill_s": result["prefill_seconds"], "tokens_per_s": result["tokens_per_second"],
            "state_mib": result["state_bytes"] / 2**20, "prefill_peak_mib": mib(prefill_peak[0]),
            "peak_mib": mib(memory.peak_bytes)}


def summary(samples, key):
    values = [s[key] for s in samples]
    middle = statistics.median(values)
    return middle, (min(values), max(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048,8128")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--linearized", default=None)
    parser.add_argument("--mixer", default="lolcats")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    env = environment("cpu")
    torch.manual_seed(0)
    original = load_pretrained("smollm2")
    if args.linearized:
        linear = load_pretrained(args.linearized)
    else:
        linear = copy.deepcopy(original)
        swap_decoder_attention(linear.model, args.mixer)
    kinds = sorted({a.mechanism for a in linear.attentions()})
    label = f"linearized ({'+'.join(kinds)})"
    print(f"# {env['hardware']}, {env['threads']} threads, torch {env['torch']}, float32; "
          f"{args.new} new tokens after held-out prompts; median of {args.repeats} "
          "(range when more than one)")
    warm = prompts(original.tokenizer, 16, 1)
    for model in (original, linear):  # one-time allocations stay out of the figures
        model.generate(None, 4, ids=warm, stop_at_eos=False)
    rows = []
    for length in map(int, args.lengths.split(",")):
        for batch in map(int, args.batches.split(",")):
            ids = prompts(original.tokenizer, length, batch)
            samples = {"original": [], label: []}
            for _ in range(args.repeats):
                for name, model in (("original", original), (label, linear)):
                    samples[name].append(measure(model, ids, args.new))
            for name, measured in samples.items():
                row = {"model": name, "prompt": length, "batch": batch, "new": args.new,
                       "samples": measured}
                for key in ("prefill_s", "tokens_per_s", "state_mib", "prefill_peak_mib",
                            "peak_mib"):
                    row[key], row[key + "_range"] = summary(measured, key)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "samples"}), flush=True)
    print()
    print("| prompt | batch | model | prefill s | prefill peak MiB | decode tokens/s | speed-up "
          "| state MiB | decoding peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for index in range(0, len(rows), 2):
        base = rows[index]
        for row in rows[index:index + 2]:
            low, high = row["tokens_per_s_range"]
            spread = f" ({low:.1f}-{high:.1f})" if args.repeats > 1 else ""
            ratio = row["tokens_per_s"] / base["tokens_per_s"]
            print(f"| {row['prompt']:,} | {row['batch']} | {row['model']} | "
                  f"{row['prefill_s']:.2f} | {row['prefill_peak_mib']:.0f} | "
                  f"{row['tokens_per_s']:.1f}{spread} | {ratio:.2f}x | {row['state_mib']:.1f} | "
                  f"{row['peak_mib']:.0f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"environment": env, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
