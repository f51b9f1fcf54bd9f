"""Compression benchmark: train softmax, gla and mamba2 (and softmax with the clipped
softmax and with gated attention) on MQAR and ListOps at the cpu preset, then compress each
by every recipe of compress_recipes.toml (and compress_pruning.toml where the model has
several heads and an MLP), all into one store; the leaderboard's compression tables and
compression.png hold the results. ``--minilm`` also compresses the pretrained MiniLM by
compress_minilm.toml (the pretrained and compress extras). ``--ort`` compresses by the
ONNX Runtime and bfloat16 recipes instead (compress_ort.toml, compress_ort_pruning.toml),
``--sources`` keeps some of the models.

    python benchmarks/compress_models.py --out results/compress [--minilm]
    python benchmarks/compress_models.py --out results/compress --ort --sources softmax,gla,mamba2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = [("softmax", []), ("gla", []), ("mamba2", []),
           ("softmax", ["--option", "clip_gamma=-0.03"]), ("softmax", ["--option", "gated=true"])]


def one_by_one(recipes: Path) -> list[list[str]]:
    """Each [[recipe]] of ``recipes`` as its command-line steps (``--method 'NAME k=v'``
    ...): a recipe one model cannot take (a graph that does not reproduce it) leaves the
    others measured."""
    import tomllib

    out = []
    for table in tomllib.loads(recipes.read_text())["recipe"]:
        steps = table.get("steps", [table])
        out.append([arg for step in steps for arg in (
            "--method", " ".join([step["method"], *(f"{k}={v}" for k, v in step.items()
                                                     if k != "method")]))])
    return out


def attnarena(*args):
    subprocess.run([sys.executable, "-m", "attnarena", *args], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/compress")
    parser.add_argument("--tasks", default="mqar,listops")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--minilm", action="store_true",
                        help="also the pretrained MiniLM (encoder timed at length 64 and 256)")
    parser.add_argument("--ort", action="store_true",
                        help="the ONNX Runtime and bfloat16 recipes instead of the torch ones")
    parser.add_argument("--sources", default=None,
                        help="comma-separated mechanisms to train and compress (default: all "
                             "five models; the softmax variants count as softmax)")
    args = parser.parse_args()
    sources = [(m, o) for m, o in SOURCES
               if args.sources is None or (m in args.sources.split(",") and not o)]
    out = Path(args.out)
    store = str(out / "arena.sqlite")
    from attnarena.arena.store import Store
    from attnarena.options import parse_options

    for task in args.tasks.split(","):
        for mixer, options in sources:
            settings = parse_options(options[1::2])
            if not any(r["status"] == "done" and r["task"] == task and r["mixer"] == mixer
                       and r["config"]["mixer_options"] == settings
                       for r in Store(store).runs()):
                attnarena("train", "--task", task, "--mixer", mixer, *options, "--preset",
                          "cpu", "--store", store, "--out", str(out), "--quiet")
    kept = {(m, tuple(o)) for m, o in sources}
    prefix = "compress_ort" if args.ort else "compress"
    for run in Store(store).runs():
        options = [x for k, v in sorted(run["config"]["mixer_options"].items())
                   for x in ("--option", f"{k}={str(v).lower()}")]
        if run["status"] != "done" or run["task"] not in args.tasks.split(",") or \
                (args.sources and (run["mixer"], tuple(options)) not in kept):
            continue
        model = run["config"]["model"]
        recipes = [HERE / f"{prefix}_recipes.toml" if not args.ort else HERE / f"{prefix}.toml"]
        if model.get("heads", 1) > 1 and model.get("mlp_dim") and run["mixer"] != "mamba2":
            recipes.append(HERE / f"{prefix}_pruning.toml")
        for recipe in recipes:
            for steps in (one_by_one(recipe) if args.ort else [["--recipes", str(recipe)]]):
                try:
                    attnarena("compress", run["id"], *steps, "--store", store,
                              "--out", str(out), "--repeats", str(args.repeats), "--quiet")
                except subprocess.CalledProcessError:
                    if not args.ort:
                        raise
                    print(f"{run['id']}: {' '.join(steps[1::2])} left out (the error above)")
    if args.minilm:
        attnarena("compress", "--model", "minilm", "--recipes",
                  str(HERE / "compress_minilm.toml"), "--length", "64", "--repeats", "3",
                  "--store", store, "--out", str(out), "--quiet")


if __name__ == "__main__":
    main()
