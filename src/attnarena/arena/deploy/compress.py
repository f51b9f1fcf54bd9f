"""``attnarena compress``: compress a trained model by recipes, measure it, store the rows.

For a finished run (or a run folder) and each recipe, one row in the store's ``compress``
table: the recipe, the task metric, the weight bytes as saved, the parameter count, the
latency and peak memory of the whole model at the task's length and of its blocks at the
task's length and at 4x it (batch 1 and 32), what the methods kept in float, and the
source. The uncompressed model gets a row too, with the outlier measures of Bondarenko et
al. 2023; it is timed again in every call, so that every ratio compares models timed side
by side. Each compressed model is saved (safetensors + the recipe) and loads back with
``attnarena.arena.compressed.load_compressed``.
"""
from __future__ import annotations

import copy
import time
import uuid
from pathlib import Path

import torch

from attnarena.arena.compressed import (row_key, report_summary, linear_bytes, load_compressed,
                                        save_compressed, stored_bytes, weight_count)
from attnarena.arena.conditions import OthersLoad, spread
from attnarena.arena.environment import environment, resolve_device
from attnarena.arena.memory import PeakMemory
from attnarena.arena.store import Store

BATCH_SIZES = (1, 32)
LENGTH_FACTORS = (1, 4)


# -- measuring ----------------------------------------------------------------------------

def _width(model) -> int | None:
    from attnarena.compress.linearize_model import mixer_blocks

    blocks = mixer_blocks(model)
    if not blocks:
        return None
    block = blocks[0]
    return block.down.in_features if isinstance(block.down, torch.nn.Linear) else block.mixer.dim


def side_by_side(models, cells_of, device, repeats: int = 5) -> list[dict]:
    """Time every model's cells (``cells_of(model)``: {(key, ...): call}) round-robin: each
    repeat runs every cell of every model once, so drift in the machine's speed over the
    measurement falls on all models alike. Returns, per model, nested dicts of
    {"ms": median, "q1_ms", "q3_ms" (quartiles), "repeats", "others_share" (the share of
    the machine other processes used meanwhile), "peak_mb": peak memory of one more call}
    along each cell's key path."""
    cells = [cells_of(m) for m in models]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda d: None)
    for calls in cells:
        for call in calls.values():
            call()  # warm-up
    times = [{key: [] for key in calls} for calls in cells]
    with OthersLoad() as load:
        for _ in range(repeats):
            for calls, timing in zip(cells, times):
                for key, call in calls.items():
                    start = time.perf_counter()
                    call()
                    sync(device)
                    timing[key].append((time.perf_counter() - start) * 1e3)
    out = []
    for calls, timing in zip(cells, times):
        nested = {}
        for key, call in calls.items():
            with PeakMemory(device) as memory:
                call()
            place = nested
            for part in key[:-1]:
                place = place.setdefault(part, {})
            kept = spread(timing[key])
            place[key[-1]] = {"ms": kept["median_ms"], "q1_ms": kept["q1_ms"],
                              "q3_ms": kept["q3_ms"], "repeats": kept["repeats"],
                              "others_share": load.share,
                              "peak_mb": None if memory.peak_bytes is None
                              else memory.peak_bytes / 2**20}
        out.append(nested)
    return out


def latency_cells(model, task, device, seed: int = 0) -> dict:
    """What is timed of a trained model: the whole model on test batches at the task's
    length (("model", batch)), and its stack of blocks on (batch, factor * L, dim) inputs
    (("blocks", factor, batch): the part every compression method changes; a longer input
    would overrun learned position tables)."""
    model.eval()
    cells = {}
    for size in BATCH_SIZES:
        batch = {k: v.to(device) for k, v in task.batch(
            size, torch.Generator().manual_seed(seed), "test").items()}
        cells[("model", str(size))] = torch.no_grad()(
            lambda batch=batch: task.score(model, batch, stats=False))
    width = _width(model)
    if width is None or not hasattr(model, "_trunk"):
        return cells
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    for factor in LENGTH_FACTORS:
        for size in BATCH_SIZES:
            x = torch.randn(size, factor * task.sequence_length, width, device=device,
                            dtype=dtype, generator=torch.Generator(device).manual_seed(seed))
            cells[("blocks", str(factor), str(size))] = torch.no_grad()(
                lambda x=x: model._trunk(x))
    return cells


# -- the command ---------------------------------------------------------------------------

def _source(source, store, results_dir):
    """(label, run id or None) of a run id or a run folder."""
    from attnarena.arena.artifacts import run_folder

    if (Path(source) / "config.json").is_file():
        return str(source), None
    run = store.run(source)
    if run is None or run["status"] != "done":
        state = "not in the store" if run is None else f"{run['status']}, not done"
        raise ValueError(f"run {source!r} is {state} ({store.path}); compress a finished run "
                         "(ids are in the leaderboard) or a run folder")
    if not (run_folder(results_dir, source) / "config.json").is_file():
        raise ValueError(f"run {source!r} has no saved model under {results_dir}/runs (pass "
                         "--out where it was trained, or rerun it with --rerun)")
    return source, source


def _compress_data(model, task, resolved, device, calibration, batch):
    from attnarena.compress.distill import copy_teacher
    from attnarena.compress.recipe import CompressData
    from attnarena.seeds import batch_seed

    seed = resolved["seed"]

    def fetch(step, split="train"):
        generator = torch.Generator().manual_seed(batch_seed(seed, step))
        return {k: v.to(device) for k, v in task.batch(batch, generator, split).items()}

    def build(mixer, options, overrides):
        settings = {**resolved, "mixer": mixer, "mixer_options": dict(options),
                    "model": {**resolved["model"], **overrides}}
        return task.build_model(mixer, settings["mixer_options"], settings["model"]), settings

    return CompressData(
        calibration=[fetch(3 * 10**6 + i) for i in range(calibration)],
        loss=lambda m, b: task.score(m, b, stats=False)[0],
        train_batch=lambda step: fetch(4 * 10**6 + step),
        teacher=copy_teacher(model), build=build, seed=seed)


def compress_run(source, recipes, *, store_path="results/arena.sqlite", results_dir="results",
                 device="auto", calibration: int = 4, batch: int | None = None,
                 repeats: int = 5, rerun: bool = False, skip_unfit: bool = False,
                 log=print) -> list[dict]:
    """Compress the trained model ``source`` (a run id in the store, or a run folder) by
    each recipe in ``recipes`` (lists of ``Step``) and store one row each, plus the
    uncompressed model's row first. A recipe the model cannot take (head pruning without
    heads) stops everything before any work, or with ``skip_unfit`` is logged and left out.

    Returns the rows, the uncompressed model's first.
    """
    from attnarena.arena.artifacts import load_run
    from attnarena.arena.train import evaluate
    from attnarena.compress.outliers import outlier_measures
    from attnarena.compress.recipe import apply_recipe, check_recipe, recipe_label
    from attnarena.seeds import eval_seed
    from attnarena.tasks import create_task

    device = resolve_device(device)
    env = environment(device)
    store = Store(store_path)
    label, run_id = _source(source, store, results_dir)
    model = load_run(source, results_dir=results_dir, device=device)
    resolved = model.arena_config
    fit = []
    for steps in recipes:
        try:
            check_recipe(model, steps)
        except ValueError as error:
            if not skip_unfit:
                raise
            log(f"{label}: {recipe_label(steps)} left out: {error}")
            continue
        fit.append(steps)
    recipes = fit
    task = create_task(resolved["task"], **resolved["task_options"])
    task.prepare()
    train_cfg = resolved["train"]
    batch = batch or train_cfg["batch"]
    examples, test_seed = train_cfg["eval_examples"], eval_seed(resolved["seed"], "test")
    data = _compress_data(model, task, resolved, device, calibration, batch)
    base = {"source": label, "run": run_id, "task": resolved["task"],
            "mixer": resolved["mixer"], "mixer_options": resolved["mixer_options"],
            "metric": task.metric, "higher_is_better": task.higher_is_better,
            "calibration_batches": calibration, "batch": batch, "hardware": env["hardware"]}

    float_id = row_key(label, "float", env["hardware"])
    original = None if rerun else store.compress_row(float_id)
    if original is None:
        original = {**base, "recipe": "float", "steps": [],
                    "test": evaluate(model, task, examples, test_seed, device, "test")["metric"],
                    "bytes": stored_bytes(model), "linear_bytes": linear_bytes(model),
                    "params": weight_count(model),
                    "outliers": outlier_measures(model, data.calibration, data.loss),
                    "compress_seconds": 0.0}
        store.add_compress(float_id, original, env)
    measured = [(float_id, original, model)]

    for steps in recipes:
        name = recipe_label(steps)
        recipe = [s.to_dict() for s in steps]
        row_id = row_key(label, recipe, calibration, batch, env["hardware"])
        stored = None if rerun else store.compress_row(row_id)
        folder = Path(results_dir) / "compressed" / row_id
        if stored is not None and (folder / "compressed.json").is_file():
            log(f"reusing stored results of {name} (pass --rerun to measure again)")
            measured.append((row_id, stored, load_compressed(folder, device)))
            continue
        log(f"compressing {label} by {name}")
        torch.manual_seed(resolved["seed"])
        start = time.perf_counter()
        compressed, reports = apply_recipe(copy.deepcopy(model), steps, data, log=log)
        seconds = time.perf_counter() - start
        compressed.eval()
        log(f"  evaluating {name} ({examples or 'all'} test examples)")
        row = {**base, "recipe": name, "steps": recipe,
               "test": evaluate(compressed, task, examples, test_seed, device, "test")["metric"],
               "bytes": stored_bytes(compressed), "linear_bytes": linear_bytes(compressed),
               "params": weight_count(compressed),
               "reports": [report_summary(r) for r in reports], "compress_seconds": seconds,
               "folder": str(folder)}
        save_compressed(folder, compressed, resolved, steps, reports, row)
        store.add_compress(row_id, row, env)  # kept even if the timing below is cut short
        measured.append((row_id, row, compressed))

    log(f"timing {len(measured)} models of {label} side by side")
    speeds = side_by_side([m for _, _, m in measured],
                          lambda m: latency_cells(m, task, device), device, repeats)
    return record_timings(store, measured, speeds, task.sequence_length, env)


def record_timings(store, measured, speeds, length, env) -> list[dict]:
    """Store each row with the timings of this call and, as its baseline, those of the
    uncompressed model (``measured[0]``) from the same call: a ratio in a report never
    divides timings of two calls. Returns the rows."""
    call = uuid.uuid4().hex[:12]
    baseline = {"length": length, **speeds[0]}
    rows = []
    for (row_id, row, _), speed in zip(measured, speeds):
        row = {**row, "speed": {"length": length, **speed}, "baseline_speed": baseline,
               "timing_call": call}
        row.pop("environment", None)
        store.add_compress(row_id, row, env)
        rows.append(row)
    return rows
