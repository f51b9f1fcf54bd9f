"""``attnarena compress``: compress a trained model by recipes, measure it, store the rows.

For a finished run (or a run folder) and each recipe, one row in the store's ``compress``
table: the recipe, the task metric, the weight bytes as saved, the parameter count, the
latency and peak memory of the whole model at the task's length and of its blocks at the
task's length and at 4x it (batch 1 and 32), what the methods kept in float, and the
source. The uncompressed model gets a row too, with the outlier measures of Bondarenko et
al. 2023; it is timed again in every call, so that every ratio compares models timed side
by side. Each compressed model is saved (safetensors + the recipe) and loads back with
``load_compressed``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import statistics
import time
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from attnarena.arena.checkpoint import untie
from attnarena.arena.environment import environment, resolve_device
from attnarena.arena.memory import PeakMemory
from attnarena.arena.store import Store

BATCH_SIZES = (1, 32)
LENGTH_FACTORS = (1, 4)


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# -- saving -------------------------------------------------------------------------------

def _flatten(model) -> tuple[dict, dict]:
    """(tensors, metadata) safetensors can hold, torchao's quantized tensors flattened into
    their parts."""
    state = untie({k: v for k, v in model.state_dict().items()})
    if all(type(v) is torch.Tensor for v in state.values()):
        return state, {}
    from attnarena.compress.quantize import torchao

    torchao()
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    return flatten_tensor_state_dict(state)


def stored_bytes(model) -> int:
    """Size of the model's weights as ``save_compressed`` writes them."""
    tensors, metadata = _flatten(model)
    return len(save(tensors, metadata=metadata or None))


def linear_bytes(model) -> int:
    """Bytes of the linear layers' tensors as saved: the part of the model the methods
    compress (embeddings, norms and the like are the rest)."""
    from attnarena.compress.fakequant import QuantLinear

    names = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantLinear))}
    tensors, _ = _flatten(model)
    return sum(t.numel() * t.element_size() for k, t in tensors.items()
               if k.rsplit(".", 1)[0] in names)


def weight_count(model) -> int:
    """Parameters and persistent buffers the model computes with (quantized weights
    counted by their number of values, not their bytes)."""
    count = 0
    for module in model.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + [
                (n, b) for n, b in module.named_buffers(recurse=False)
                if b is not None and n not in module._non_persistent_buffers_set]:
            if name == "codes":
                count += module.in_features * module.out_features
            elif name in ("scale", "act_scale"):
                continue
            else:
                count += tensor.numel()
    return count


def save_compressed(folder, model, resolved: dict, steps: list, reports: list,
                    row: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``compressed.json`` (the source run's config, the
    recipe and what each step did), whole or not at all."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        tensors, metadata = _flatten(model)
        save_file(tensors, str(tmp / "model.safetensors"), metadata=metadata or None)
        (tmp / "compressed.json").write_text(json.dumps(
            {"config": resolved, "recipe": [s.to_dict() for s in steps], "reports": reports,
             "row": row}, indent=2, default=str))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_compressed(folder, device="cpu") -> torch.nn.Module:
    """A model saved by ``attnarena compress`` (its folder), in eval mode; its
    ``arena_config`` is the source run's config and ``compression`` the recipe (a
    pretrained source gives back its ``PretrainedEncoder``)."""
    from attnarena.arena.artifacts import build_run_model
    from attnarena.compress.recipe import recipe_from_dicts, restore_recipe

    folder = Path(folder)
    try:
        saved = json.loads((folder / "compressed.json").read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"no compressed model in {folder}: {error}") from None
    if "pretrained" in saved["config"]:
        from attnarena.arena.compress_pretrained import load_compressed_pretrained

        return load_compressed_pretrained(saved, folder, device)
    steps = recipe_from_dicts(saved["recipe"])
    reports = saved["reports"]
    resolved = saved["config"]
    start = 0
    for index, report in enumerate(reports):
        if "student" in report:  # a new student: its own architecture, later steps on it
            resolved, start = report["student"], index + 1
    model = build_run_model(resolved)
    model = restore_recipe(model, steps[start:], reports[start:])
    load_state(model, folder)
    model.arena_config, model.compression = resolved, saved["recipe"]
    return model.to(device).eval()


def load_state(model, folder) -> None:
    """Load ``model.safetensors`` of ``folder`` into ``model`` (quantized tensors rebuilt
    from their parts), replacing its tensors."""
    path = str(Path(folder) / "model.safetensors")
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(path)
    if "tensor_names" in metadata:  # torchao's tensors, flattened
        from attnarena.compress.quantize import torchao

        torchao()
        from torchao.prototype.safetensors.safetensors_support import (
            unflatten_tensor_state_dict)

        tensors, leftover = unflatten_tensor_state_dict(tensors, metadata)
        tensors.update(leftover)
    model.load_state_dict(tensors, assign=True)


# -- measuring ----------------------------------------------------------------------------

def _timed(fn, device, repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    with PeakMemory(device) as memory:
        fn()
    return {"ms": statistics.median(times),
            "peak_mb": None if memory.peak_bytes is None else memory.peak_bytes / 2**20}


def _width(model) -> int | None:
    from attnarena.compress.linearize_model import mixer_blocks

    blocks = mixer_blocks(model)
    if not blocks:
        return None
    block = blocks[0]
    return block.down.in_features if isinstance(block.down, torch.nn.Linear) else block.mixer.dim


@torch.no_grad()
def model_latency(model, task, device, *, repeats: int = 5, seed: int = 0) -> dict:
    """{"model": {batch: timing}} for the whole model on test batches at the task's length,
    and {"blocks": {factor: {batch: timing}}} for its stack of blocks on (batch, factor * L,
    dim) inputs (the part every compression method changes; a longer input would overrun
    learned position tables)."""
    model.eval()
    length = task.sequence_length
    out = {"length": length, "model": {}, "blocks": {}}
    for size in BATCH_SIZES:
        batch = {k: v.to(device) for k, v in task.batch(
            size, torch.Generator().manual_seed(seed), "test").items()}
        out["model"][str(size)] = _timed(lambda: task.score(model, batch, stats=False),
                                         device, repeats)
    width = _width(model)
    if width is None or not hasattr(model, "_trunk"):
        return out
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    for factor in LENGTH_FACTORS:
        out["blocks"][str(factor)] = {}
        for size in BATCH_SIZES:
            x = torch.randn(size, factor * length, width, device=device, dtype=dtype,
                            generator=torch.Generator(device).manual_seed(seed))
            out["blocks"][str(factor)][str(size)] = _timed(lambda: model._trunk(x), device,
                                                           repeats)
    return out


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


def _summary(report: dict) -> dict:
    """What a step's report says that a reader of the row needs (not its raw scores)."""
    keep = ("quantized", "kept_float", "mean_bits", "heads_before", "heads_after",
            "neurons_before", "neurons_after", "ranks", "weights_before", "weights_after",
            "sparsity", "folded", "not_folded", "first", "last", "student")
    return {k: v for k, v in report.items() if k in keep}


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

    float_id = _digest(label, "float", env["hardware"])
    found = None if rerun else store.compress_row(float_id)
    log(f"timing the uncompressed model of {label}")
    speed = model_latency(model, task, device, repeats=repeats)
    if found is None:
        found = {**base, "recipe": "float", "steps": [],
                 "test": evaluate(model, task, examples, test_seed, device, "test")["metric"],
                 "bytes": stored_bytes(model), "linear_bytes": linear_bytes(model),
                 "params": weight_count(model),
                 "outliers": outlier_measures(model, data.calibration, data.loss),
                 "compress_seconds": 0.0}
    original = {**found, "speed": speed}
    original.pop("environment", None)
    store.add_compress(float_id, original, env)
    rows = [original]

    for steps in recipes:
        name = recipe_label(steps)
        recipe = [s.to_dict() for s in steps]
        row_id = _digest(label, recipe, calibration, batch, env["hardware"])
        stored = None if rerun else store.compress_row(row_id)
        folder = Path(results_dir) / "compressed" / row_id
        if stored is not None and (folder / "compressed.json").is_file():
            log(f"reusing stored results of {name} (pass --rerun to measure again)")
            compressed = load_compressed(folder, device)
            stored = {**stored, "speed": model_latency(compressed, task, device,
                                                       repeats=repeats)}
            stored.pop("environment", None)
            store.add_compress(row_id, stored, env)
            rows.append(stored)
            continue
        log(f"compressing {label} by {name}")
        torch.manual_seed(resolved["seed"])
        start = time.perf_counter()
        compressed, reports = apply_recipe(copy.deepcopy(model), steps, data, log=log)
        seconds = time.perf_counter() - start
        compressed.eval()
        row = {**base, "recipe": name, "steps": recipe,
               "test": evaluate(compressed, task, examples, test_seed, device, "test")["metric"],
               "bytes": stored_bytes(compressed), "linear_bytes": linear_bytes(compressed),
               "params": weight_count(compressed),
               "speed": model_latency(compressed, task, device, repeats=repeats),
               "reports": [_summary(r) for r in reports], "compress_seconds": seconds,
               "folder": str(folder)}
        save_compressed(folder, compressed, resolved, steps, reports, row)
        store.add_compress(row_id, row, env)
        rows.append(row)
    return rows
