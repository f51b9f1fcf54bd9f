"""The ``attnarena`` command's arguments: one sub-parser per command (the commands
themselves are in ``attnarena.cli``, dispatched by name)."""
from __future__ import annotations

import argparse

from attnarena import __version__

STORE_HELP = ("the results store: an SQLite file (default results/arena.sqlite) or a "
              "PostgreSQL database, postgresql://user:password@host:port/db")
DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when present, else cpu; the default)"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _keep_softmax(text: str):
    """Layer indices ("0,5") or "auto:K" (K layers chosen after stage 1)."""
    if text.startswith("auto:"):
        count = text[5:]
        if not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"expected auto:K with K a positive number of "
                                             f"layers, got {text!r}")
        return int(count)
    return _indices(text)


def _indices(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}")
    if min(values, default=0) < 0:
        raise argparse.ArgumentTypeError(f"expected layer indices >= 0, got {text!r}")
    return values


PATTERN_LETTERS = {"self": "s", "causal": "c", "cross": "x", "causal_cross": "cx"}
FORM_WORDS = {"parallel": "par", "chunk": "chunk", "recurrent": "rec"}


def build_parser() -> argparse.ArgumentParser:
    from attnarena.compress import list_methods

    parser = argparse.ArgumentParser(prog="attnarena",
                                     description="The efficient-Transformer arena.")
    parser.add_argument("--version", action="version", version=f"attnarena {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, print the full traceback (also ATTNARENA_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    # --traceback also after the command's name
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)

    def command(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)


    p = command("list", help="mechanisms and what each supports")
    p.add_argument("pattern", nargs="?", default=None, help="glob on names, e.g. '*linear*'")
    p.add_argument("--form", choices=sorted(FORM_WORDS), default=None,
                   help="only mechanisms with this form")
    p.add_argument("--attention", choices=sorted(PATTERN_LETTERS), default=None,
                   help="only mechanisms that support this pattern")
    p.add_argument("--family", default=None, help="only families whose name contains this")
    p.add_argument("--long", action="store_true",
                   help="each mechanism's paper, complexity, patterns, forms and kernel")
    p.add_argument("--markdown", action="store_true",
                   help="print the README's mechanism table (markdown)")

    p = command("tasks", help="tasks, or one task's options and presets")
    p.add_argument("name", nargs="?", default=None)

    p = command("speed", help="time and peak memory against sequence length")
    p.add_argument("--mixers", default=None,
                   help="comma-separated names, options as name:key=value (default: all)")
    p.add_argument("--lengths", type=_ints, default=[1024, 4096, 16384])
    p.add_argument("--pass", dest="pass_", choices=["fwd", "fwdbwd", "decode"], default="fwd")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32",
                   choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--noncausal", action="store_true", help="noncausal self attention")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--time-budget", type=float, default=60.0,
                   help="seconds for one call before the case counts as a timeout")
    p.add_argument("--out", default="results/speed",
                   help="folder for the CSV, JSON and PNG (apart from the report's files)")
    p.add_argument("--quiet", action="store_true")

    p = command("run", help="the main job: a suite of runs -> store -> report")
    p.add_argument("--suite", default="quick", help="built-in suite name or a .toml file")
    p.add_argument("--mixers", default=None,
                   help="only these mixers or stacks (comma-separated; a stack's layers "
                        "joined with +, e.g. gla,3*gla+softmax)")
    p.add_argument("--tasks", default=None, help="only these tasks (comma-separated)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results",
                   help="reports, checkpoints and trained models (OUT/runs) go here")
    p.add_argument("--rerun", action="store_true", help="repeat runs already in the store")
    p.add_argument("--data", default=None,
                   help="data root with a folder per task that reads data (ROOT/text, "
                        "ROOT/retrieval, ROOT/image, ROOT/listops, ROOT/pathfinder)")
    p.add_argument("--jobs", type=_positive, default=1,
                   help="train this many runs at once, each process on an equal share of "
                        "the threads (small models train faster on one core each than on "
                        "several together); the speed sweep runs after them, alone")
    p.add_argument("--max-runs", type=_positive, default=5000,
                   help="refuse a suite naming more runs than this (default 5000)")
    p.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="local: train here (with --jobs processes); submitit: submit "
                        "--workers jobs (a Slurm job array, or local processes) that train "
                        "the runs through the store, wait for them, then report")
    p.add_argument("--workers", type=_positive, default=1,
                   help="--launcher submitit: how many jobs")
    p.add_argument("--cluster", choices=["auto", "local", "slurm"], default="auto",
                   help="--launcher submitit: where the jobs run (auto: Slurm when sbatch "
                        "is here, else local processes)")
    p.add_argument("--launcher-option", action="append", metavar="KEY=VALUE",
                   help="--launcher submitit: an executor parameter (repeatable), e.g. "
                        "slurm_partition=gpu, timeout_min=120, gpus_per_node=1")
    p.add_argument("--train-only", action="store_true",
                   help="stop once every run is trained (no speed sweep, compression or "
                        "reports): each task of a cluster job array")
    p.add_argument("--quiet", action="store_true")

    p = command("train", help="one training run")
    p.add_argument("--task", required=True)
    p.add_argument("--mixer", required=True,
                   help="a mechanism, or a stack of them across layers: '3*gla+softmax', "
                        "'gla,gla,local(window=64)' (repeated to the depth)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="global batch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--option", action="append", help="mixer option key=value (repeatable)")
    p.add_argument("--model", action="append",
                   help="model setting key=value (repeatable), e.g. depth=4 or dim=128")
    p.add_argument("--task-option", action="append",
                   help="task option key=value (repeatable), e.g. max_length=4096")
    p.add_argument("--data", default=None,
                   help="the task's data directory (text, retrieval and image need one; "
                        "listops and pathfinder read one instead of generating)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", default=None,
                       help="record the run in this store (default OUT/arena.sqlite, the "
                            "store `attnarena run` and `report` use), so it shows in the "
                            "report and `compress RUN_ID` finds it")
    where.add_argument("--no-store", action="store_true", help="record the run in no store")
    p.add_argument("--out", default="results",
                   help="checkpoints and the trained model (OUT/runs/RUN_ID) go here")
    p.add_argument("--json", default=None, help="write config and metrics to this file")
    p.add_argument("--quiet", action="store_true")

    p = command("data", help="write a task's data to disk in its on-disk format")
    p.add_argument("task")
    p.add_argument("--out", required=True, help="directory to write into")
    p.add_argument("--preset", default=None,
                   help="whose task settings (sizes, lengths) to use: cpu (the default, "
                        "as for train) or paper (LRA's published sizes)")
    p.add_argument("--option", action="append",
                   help="task option key=value (repeatable), e.g. train_examples=1000")
    p.add_argument("--synthetic", action="store_true",
                   help="text, retrieval, image: write a small made-up stand-in in the real "
                        "layout")
    p.add_argument("--examples", type=int, default=1000,
                   help="examples per split for tasks drawn fresh each batch")

    p = command("export", help="a trained run's weights and config, or an ONNX graph of it or "
                               "of a pretrained model, to use elsewhere")
    p.add_argument("run", nargs="?", default=None,
                   help="a run id (see the leaderboard) or a run folder")
    p.add_argument("--model", default=None,
                   help="or a pretrained model (minilm, smollm2, or a model directory, such "
                        "as a linearized one): --format onnx; a causal LM's decoding step too")
    p.add_argument("--format", choices=("weights", "onnx"), default="weights",
                   help="weights (safetensors + config, the default) or onnx (an ONNX graph "
                        "with dynamic batch and length, checked in ONNX Runtime)")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--results", default="results", help="where the run's results are")

    p = command("linearize", help="linearize a pretrained encoder or a trained softmax run "
                                  "by attention transfer, then fine-tuning")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", default=None,
                      help="a pretrained model: minilm (all-MiniLM-L6-v2), smollm2 "
                           "(SmolLM2-135M, a causal LM; offline with the pretrained extra) "
                           "or a model directory")
    what.add_argument("--run", default=None, help="a finished softmax run of the store (its id)")
    p.add_argument("--mixer", default=None, help="the mechanism that replaces softmax")
    p.add_argument("--option", action="append", help="mixer option key=value (repeatable)")
    p.add_argument("--keep-softmax", type=_keep_softmax, default=None,
                   help="layers that stay softmax attention, e.g. 0,5; or auto:K, the K "
                        "layers with the largest attention-transfer loss after stage 1")
    p.add_argument("--steps", type=int, default=None,
                   help="steps of each stage (default 300 each)")
    p.add_argument("--transfer-steps", type=int, default=None, help="steps of stage 1 only")
    p.add_argument("--finetune-steps", type=int, default=None, help="steps of stage 2 only")
    p.add_argument("--loss", choices=["mse", "attention"], default="mse",
                   help="stage 1: match attention outputs (mse, LoLCATs) or attention "
                        "weights (Hedgehog's cross-entropy)")
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the stage-2 adapters")
    p.add_argument("--batch", type=int, default=None,
                   help="sentences (an encoder; default 32) or token windows (a decoder; "
                        "default 4) per step with --model (a --run trains on its own batch)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per training sequence with --model (default 128 for an "
                        "encoder, 512 for a decoder)")
    p.add_argument("--transfer-lr", type=float, default=None, help="stage 1 learning rate")
    p.add_argument("--finetune-lr", type=float, default=None, help="stage 2 learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lengths", type=_ints, default=None,
                   help="lengths to time (default 128,512 for an encoder, 512,2048 for a "
                        "decoder's prefill)")
    p.add_argument("--contexts", type=_ints, default=None,
                   help="a decoder's perplexity contexts (default 512,2048)")
    p.add_argument("--eval-tokens", type=int, default=4096,
                   help="a decoder's held-out tokens measured (default 4096)")
    p.add_argument("--eval-sentences", type=int, default=None,
                   help="measure agreement on only the first N held-out sentences")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results")
    p.add_argument("--rerun", action="store_true", help="measure again rows already stored")
    p.add_argument("--remeasure-speed", action="store_true",
                   help="time again every stored row of --model on this machine (the "
                        "original and each architecture back to back), keeping the rest")
    p.add_argument("--quiet", action="store_true")

    p = command("generate", help="continue a prompt with a causal LM (smollm2, or a "
                                 "linearized decoder's folder), streaming tokens")
    p.add_argument("--model", default="smollm2", help="smollm2 or a model directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = command("compress", help="compress a trained run by recipes (quantization, pruning, "
                                 "low-rank, distillation), measured before and after",
                epilog="methods: " + ", ".join(list_methods()) + ". Example: attnarena "
                       "compress RUN_ID --method 'prune_heads fraction=0.5' --method "
                       "'distill steps=200' --method int8_dynamic")
    p.add_argument("source", nargs="?", default=None,
                   help="a finished run's id (see the leaderboard) or a run folder")
    p.add_argument("--model", default=None,
                   help="or a pretrained encoder: minilm (offline with the pretrained extra) "
                        "or a model directory; quality = agreement with the original")
    p.add_argument("--eval-sentences", type=int, default=None,
                   help="with --model: measure agreement on the first N held-out sentences")
    p.add_argument("--length", type=int, default=128,
                   help="with --model: the encoder length timed (and 4x it, within its "
                        "positions)")
    recipe = p.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--method", action="append",
                        help="one step, 'NAME key=value ...' (repeatable: the steps of one "
                             "recipe, in order)")
    recipe.add_argument("--recipes", default=None,
                        help="a TOML file of several recipes: [[recipe]] tables, each with "
                             "steps = [{method = 'NAME', key = value}, ...]")
    p.add_argument("--calibration", type=int, default=4,
                   help="calibration batches (training split) for data-driven methods")
    p.add_argument("--batch", type=int, default=None,
                   help="calibration and distillation batch (default: the run's own)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per latency")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results",
                   help="where runs were trained; compressed models go to OUT/compressed")
    p.add_argument("--rerun", action="store_true", help="compress again recipes already stored")
    p.add_argument("--quiet", action="store_true")

    p = command("serve", help="the leaderboard page from the store, live while a suite runs")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results",
                   help="where the suite's checkpoints are (curves of runs in progress)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="default 8765; 0 takes a free one")
    p.add_argument("--refresh", type=float, default=3.0,
                   help="seconds between the page's refreshes (default 3)")

    p = command("report", help="leaderboard, plots and leaderboard.html from the store")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md")
    p.add_argument("--output", default=None,
                   help="write the leaderboard (Markdown, or the rows with --format csv or "
                        "json) to this file, not stdout")

    p = command("choose", help="which mechanism for my length and budget: quality from the "
                               "store joined with time and memory at that length")
    p.add_argument("--length", type=_positive, required=True, help="the sequence length")
    p.add_argument("--batch", type=_positive, default=1)
    p.add_argument("--memory", type=float, default=None,
                   help="a memory budget in MiB (peak of a forward pass, or the decoding "
                        "state with --decode)")
    p.add_argument("--decode", action="store_true",
                   help="judge by a decoding step and the state it keeps (causal)")
    p.add_argument("--causal", action="store_true", help="causal attention only")
    p.add_argument("--task", default=None,
                   help="take quality from this task only (default: every accuracy task)")
    p.add_argument("--mixers", default=None,
                   help="compare only these (default: every mechanism with a finished run)")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="use stored timings only; never measure")
    p.add_argument("--quiet", action="store_true")

    p = command("store", help="maintain a results store; copy rows between stores")
    p.add_argument("action", choices=["migrate", "copy"],
                   help="migrate: bring a store written by an older attnarena up to date "
                        "(every row and column kept; the file is backed up first); "
                        "copy SRC DST: every row of SRC into DST, idempotent (a row DST has "
                        "is replaced only by one further along or newer)")
    p.add_argument("locations", nargs="*", metavar="STORE",
                   help="copy: SRC and DST, each an SQLite file or a postgresql:// URL")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    return parser
