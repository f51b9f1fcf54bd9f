"""What input validation costs on the timed path: a mixer's forward at L 4096 and 16384,
one decoding step, and a whole model's forward, each with the entry checks only (the
default) and with every check on (``attnarena.debug_checks(True)``), side by side in one run.

Usage: python benchmarks/call_overhead.py [--repeats 15]

Prints, per case, the median time (with its interquartile range) of each mode and the
difference: the validation overhead a user pays. The two modes alternate within every
repeat, so drift in the machine's speed falls on both alike.
"""
from __future__ import annotations

import argparse
import time

import torch

import attnarena as aa
from attnarena.models import CausalLM
from attnarena.arena.measure.conditions import OthersLoad, spread


def cases(dim: int = 256, heads: int = 4):
    torch.manual_seed(0)
    out = {}
    for name in ("gla", "linear", "softmax"):
        mixer = aa.create_mixer(name, dim=dim, heads=heads, causal=True).eval()
        for length in (4096, 16384):
            x = torch.randn(1, length, dim)
            out[f"{name} forward L={length}"] = (lambda m=mixer, x=x: m(x), 3)
        x_t = torch.randn(1, dim)
        if name == "softmax":
            _, state = mixer.prefill(torch.randn(1, 256, dim))
        else:
            state = mixer.init_state(1)
        holder = {"state": state}  # each step continues from the state the last returned

        def step(m=mixer, x=x_t, holder=holder):
            _, holder["state"] = m.step(x, holder["state"])

        out[f"{name} step (state after 256 tokens)" if name == "softmax" else
            f"{name} step"] = (step, 200)
    model = CausalLM(vocab_size=256, dim=dim, depth=4, heads=heads,
                               mixer="gla", max_len=4096).eval()
    tokens = torch.randint(0, 256, (1, 4096))
    out["CausalLM(gla, depth 4) forward L=4096"] = (lambda: model(tokens), 1)
    return out


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    modes = {"entry checks": False, "all checks": True}
    print(f"{'case':45s} {'entry checks':>22s} {'all checks':>22s} {'overhead':>10s}")
    for name, (call, inner) in cases().items():
        times = {mode: [] for mode in modes}
        for mode, on in modes.items():
            with aa.debug_checks(on):
                call()
        with OthersLoad() as load:
            for _ in range(args.repeats):
                for mode, on in modes.items():
                    with aa.debug_checks(on):
                        start = time.perf_counter()
                        for _ in range(inner):
                            call()
                        times[mode].append((time.perf_counter() - start) * 1e3 / inner)
        cells = {m: spread(t) for m, t in times.items()}
        text = [f"{c['median_ms']:.4g} ms [{c['q1_ms']:.4g}, {c['q3_ms']:.4g}]"
                for c in cells.values()]
        extra = cells["all checks"]["median_ms"] - cells["entry checks"]["median_ms"]
        busy = "  (others used the machine)" if load.share > 0.1 else ""
        print(f"{name:45s} {text[0]:>22s} {text[1]:>22s} {extra:+9.4f}{busy}", flush=True)


if __name__ == "__main__":
    main()
