"""``attnarena compress``: compress a subject by recipes, measure it, store the rows.

One driver for every subject (``attnarena.subject``): a trained arena run, or a pretrained
encoder. For each recipe, one row in the store's ``compress`` table: the recipe, the
subject's quality measure, the weight bytes as saved, the parameter count, the latency and
peak memory of the whole model and of its blocks (batch 1 and 32), what the methods kept in
float, the backend that runs it (torch, or ONNX Runtime for a recipe ending in ``ort``,
``ort_int8`` or ``ort_int8_static``) and the source. The uncompressed model gets a row too,
with the outlier measures of Bondarenko et al. 2023; it is timed again in every call, so
that every ratio compares models timed side by side. Each compressed model is saved
(safetensors, or the ONNX graph, + the recipe) and loads back with
``attnarena.arena.deploy.compressed.load_compressed``.

One rule for all subjects: a stored row is reused unless ``rerun``; every recipe starts
from the subject's seed; every model is timed ``repeats`` times round-robin.
"""
from __future__ import annotations

import copy
import time
import uuid
from pathlib import Path

import torch

from attnarena.arena.deploy.compressed import (backend, compressed_model, linear_bytes,
                                               report_summary, save_compressed, stored_bytes,
                                               weight_count)
from attnarena.arena.measure.environment import environment, resolve_device
from attnarena.arena.measure.timer import side_by_side
from attnarena.arena.store import Store, row_key


def compress(subject, recipes, *, label: str, run_id: str | None = None,
             store_path="results/arena.sqlite", results_dir="results", device="cpu",
             calibration: int = 4, batch: int | None = None, repeats: int = 5,
             rerun: bool = False, skip_unfit: bool = False, log=print) -> list[dict]:
    """Compress ``subject`` by each recipe in ``recipes`` (lists of ``Step``) and store one
    row each, plus the uncompressed model's row first. A recipe the subject cannot take
    (head pruning without heads) stops everything before any work, or with ``skip_unfit``
    is logged and left out.

    Returns the rows, the uncompressed model's first.
    """
    from attnarena.compress.outliers import outlier_measures
    from attnarena.compress.recipe import apply_recipe, check_recipe, recipe_label

    env = environment(device)
    store = Store(store_path)
    fit = []
    for steps in recipes:
        try:
            check_recipe(subject, steps)
        except ValueError as error:
            if not skip_unfit:
                raise
            log(f"{label}: {recipe_label(steps)} left out: {error}")
            continue
        fit.append(steps)
    batch = batch or subject.default_batch
    data = subject.compress_data(calibration, batch, device)
    identity = subject.identity()
    base = {"source": label, "run": run_id, **subject.describe(),
            "calibration_batches": calibration, "batch": batch, "hardware": env["hardware"]}

    def measured(candidate) -> dict:
        return {**candidate.quality(subject, device), "bytes": stored_bytes(candidate.model),
                "linear_bytes": linear_bytes(candidate.model),
                "params": weight_count(candidate.model), **backend(candidate.model)}

    float_id = row_key(label, "float", *identity, env["hardware"])
    original = None if rerun else store.compress_row(float_id)
    if original is None:
        log(f"measuring the uncompressed {label}")
        original = {**base, "recipe": "float", "steps": [], **measured(subject),
                    "outliers": outlier_measures(subject, data.calibration, data.loss),
                    "compress_seconds": 0.0}
        store.add_compress(float_id, original, env)
    done = [(float_id, original, subject)]

    for steps in fit:
        name = recipe_label(steps)
        recipe = [s.to_dict() for s in steps]
        row_id = row_key(label, recipe, calibration, batch, *identity, env["hardware"])
        stored = None if rerun else store.compress_row(row_id)
        folder = Path(results_dir) / "compressed" / row_id
        if stored is not None and (folder / "compressed.json").is_file():
            log(f"reusing stored results of {name} (pass --rerun to measure again)")
            done.append((row_id, stored,
                         subject.with_model(compressed_model(folder, device))))
            continue
        log(f"compressing {label} by {name}")
        torch.manual_seed(subject.seed)
        start = time.perf_counter()
        compressed, reports = apply_recipe(copy.deepcopy(subject), steps, data, log=log)
        seconds = time.perf_counter() - start
        compressed.model.eval()
        log(f"  evaluating {name}")
        row = {**base, "recipe": name, "steps": recipe, **measured(compressed),
               "reports": [report_summary(r) for r in reports], "compress_seconds": seconds,
               "folder": str(folder)}
        save_compressed(folder, compressed.model, subject.source_config(), steps, reports, row)
        store.add_compress(row_id, row, env)  # kept even if the timing below is cut short
        done.append((row_id, row, compressed))

    log(f"timing {len(done)} models of {label} side by side")
    speeds = side_by_side([s for _, _, s in done], lambda s: s.timing_cells(device), device,
                          repeats)
    return record_timings(store, done, speeds, subject.timed_length, env)


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


# -- the two kinds of source --------------------------------------------------------------

def _finished_run(source, store, results_dir):
    """(label, run id or None) of a run id or a run folder."""
    from attnarena.arena.run.artifacts import run_folder

    if (Path(source) / "config.json").is_file():
        return str(source), None
    run = store.run(source)
    if run is None or run["status"] != "done":
        state = "not in the store" if run is None else f"{run['status']}, not done"
        raise ValueError(f"run {source!r} is {state} ({store.label}); compress a finished run "
                         "(ids are in the leaderboard) or a run folder")
    if not (run_folder(results_dir, source) / "config.json").is_file():
        raise ValueError(f"run {source!r} has no saved model under {results_dir}/runs (pass "
                         "--out where it was trained, or rerun it with --rerun)")
    return source, source


def compress_run(source, recipes, *, store_path="results/arena.sqlite", results_dir="results",
                 device="auto", **options) -> list[dict]:
    """``compress`` the trained model of ``source`` (a run id in the store, or a run
    folder); ``options`` go to ``compress``."""
    from attnarena.arena.run.artifacts import load_run_subject

    device = resolve_device(device)
    label, run_id = _finished_run(source, Store(store_path), results_dir)
    subject = load_run_subject(source, results_dir=results_dir, device=device)
    return compress(subject, recipes, label=label, run_id=run_id, store_path=store_path,
                    results_dir=results_dir, device=device, **options)


def compress_pretrained(model, recipes, *, store_path="results/arena.sqlite",
                        results_dir="results", device="auto", length: int = 128,
                        eval_sentences=None, **options) -> list[dict]:
    """``compress`` the pretrained encoder ``model`` (a name such as "minilm" or a
    directory); quality is agreement with the uncompressed encoder's sentence embeddings on
    held-out sentences (mean cosine, top-10 neighbour overlap, Spearman of pairwise
    similarities). ``options`` go to ``compress``."""
    from attnarena.pretrained import EncoderSubject, PretrainedDecoder, load_pretrained
    from attnarena.pretrained.corpus import corpus_split

    device = resolve_device(device)
    loaded = load_pretrained(model, device=device)
    if isinstance(loaded, PretrainedDecoder):
        raise ValueError(f"{model} is a causal language model; attnarena compress --model takes "
                         "a sentence encoder (e.g. minilm), and compressing decoders is not "
                         "supported yet (attnarena linearize --model takes them)")
    subject = EncoderSubject.of(loaded,
                                train=corpus_split("train"),
                                test=corpus_split("test")[:eval_sentences], length=length)
    return compress(subject, recipes, label=str(model), store_path=store_path,
                    results_dir=results_dir, device=device, **options)
