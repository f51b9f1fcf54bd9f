"""Compression benchmark: train softmax, gla and mamba2 (and softmax with the clipped
softmax and with gated attention) on MQAR and ListOps at the cpu preset, then compress each
by every recipe of compress_recipes.toml (and compress_pruning.toml where the model has
several heads and an MLP), all into one store; the leaderboard's compression tables and
compression.png hold the results. ``--minilm`` also compresses the pretrained MiniLM by
compress_minilm.toml (the pretrained and compress extras).

    python benchmarks/compress_models.py --out results/compress [--minilm]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = [("softmax", []), ("gla", []), ("mamba2", []),
           ("softmax", ["--option", "clip_gamma=-0.03"]), ("softmax", ["--option", "gated=true"])]


def attnarena(*args):
    subprocess.run([sys.executable, "-m", "attnarena", *args], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/compress")
    parser.add_argument("--tasks", default="mqar,listops")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--minilm", action="store_true",
                        help="also the pretrained MiniLM (encoder timed at length 64 and 256)")
    args = parser.parse_args()
    out = Path(args.out)
    store = str(out / "arena.sqlite")
    from attnarena.arena.store import Store
    from attnarena.options import parse_options

    for task in args.tasks.split(","):
        for mixer, options in SOURCES:
            settings = parse_options(options[1::2])
            if not any(r["status"] == "done" and r["task"] == task and r["mixer"] == mixer
                       and r["config"]["mixer_options"] == settings
                       for r in Store(store).runs()):
                attnarena("train", "--task", task, "--mixer", mixer, *options, "--preset",
                          "cpu", "--store", store, "--out", str(out), "--quiet")
    for run in Store(store).runs():
        if run["status"] != "done":
            continue
        model = run["config"]["model"]
        recipes = [HERE / "compress_recipes.toml"]
        if model.get("heads", 1) > 1 and model.get("mlp_dim") and run["mixer"] != "mamba2":
            recipes.append(HERE / "compress_pruning.toml")
        for recipe in recipes:
            attnarena("compress", run["id"], "--recipes", str(recipe), "--store", store,
                      "--out", str(out), "--repeats", str(args.repeats), "--quiet")
    if args.minilm:
        attnarena("compress", "--model", "minilm", "--recipes",
                  str(HERE / "compress_minilm.toml"), "--length", "64", "--repeats", "3",
                  "--store", store, "--out", str(out), "--quiet")


if __name__ == "__main__":
    main()
