"""``attnarena compress --model minilm``: the compression recipes on a real pretrained
encoder (the ``pretrained`` extra).

The methods work on the transformers model inside the encoder. Quality is agreement with
the uncompressed encoder's sentence embeddings on held-out sentences (mean cosine, top-10
neighbour overlap, Spearman of pairwise similarities); the loss that calibration,
sensitivity and distillation use is 1 - cosine to the uncompressed model's embedding of
the same sentence. That loss is zero at the start, so head and neuron importance
differentiate a fixed random projection of the embeddings instead (the first-order change
of the embedding when a head is removed, E|d(r . e)/d xi|).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnarena.arena.compress import record_timings, side_by_side
from attnarena.arena.compressed import (linear_bytes, load_compressed, report_summary, row_key,
                                        save_compressed, stored_bytes, weight_count)
from attnarena.arena.environment import environment, resolve_device
from attnarena.arena.store import Store


def _batches(encoder, teacher, sentences, size, count, offset, device):
    """``count`` tokenized batches of ``size`` sentences from ``offset`` on, with the
    teacher's embeddings (``target``) and a random probe for importance."""
    out = []
    for index in range(count):
        start = (offset + index * size) % max(len(sentences) - size, 1)
        ids, mask = encoder.tokenize(sentences[start:start + size], max_length=128)
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            target = teacher.embed(ids, mask)
        probe = torch.randn(target.shape, generator=torch.Generator().manual_seed(offset + index))
        out.append({"input_ids": ids, "attention_mask": mask, "target": target,
                    "probe": probe.to(device)})
    return out


def pretrained_data(encoder, teacher, sentences, *, calibration, batch, device):
    from attnarena.compress.recipe import CompressData

    def embedding(model, b):
        states = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        return encoder.pool(states.last_hidden_state, b["attention_mask"])

    def loss(model, b):
        return (1 - F.cosine_similarity(embedding(model, b), b["target"], dim=-1)).mean()

    return CompressData(
        calibration=_batches(encoder, teacher, sentences, batch, calibration, 0, device),
        loss=loss,
        importance_loss=lambda model, b: (embedding(model, b) * b["probe"]).sum(),
        train_batch=lambda step: _batches(encoder, teacher, sentences, batch, 1,
                                          10**5 + step * batch, device)[0],
        teacher=copy.deepcopy(teacher.model).eval())


def _cells(encoder, length, device) -> dict:
    """Whole-encoder calls in the rows' layout: batch 1 and 32 at ``length`` ("model") and
    at it and 4x it within the encoder's positions ("blocks"; the encoder is its blocks but
    for the embedding lookup)."""
    limit = getattr(encoder.config, "max_position_embeddings", None) or 4 * length
    vocab = encoder.config.vocab_size
    cells = {}
    for factor in (1, 4):
        if factor * length > limit:
            continue
        for size in (1, 32):
            ids = torch.randint(1, vocab, (size, factor * length), device=device,
                                generator=torch.Generator(device).manual_seed(factor))
            call = torch.no_grad()(lambda ids=ids: encoder(ids, torch.ones_like(ids)))
            cells[("blocks", str(factor), str(size))] = call
            if factor == 1:
                cells[("model", str(size))] = call
    return cells


def compress_pretrained(model, recipes, *, store_path="results/arena.sqlite",
                        results_dir="results", device="auto", calibration: int = 4,
                        batch: int = 32, length: int = 128, eval_sentences=None,
                        repeats: int = 3, rerun: bool = False, skip_unfit: bool = False,
                        log=print) -> list[dict]:
    """Compress the pretrained encoder ``model`` (a name such as "minilm" or a directory)
    by each recipe and store one row each, the uncompressed encoder's first."""
    from attnarena.compress.linearize import agreement
    from attnarena.compress.outliers import outlier_measures
    from attnarena.compress.recipe import apply_recipe, check_recipe, recipe_label
    from attnarena.pretrained import load_pretrained
    from attnarena.pretrained.corpus import corpus_split

    device = resolve_device(device)
    env = environment(device)
    store = Store(store_path)
    teacher = load_pretrained(model, device=device)
    fit = []
    for steps in recipes:
        try:
            if any(s.method == "distill" and s.config.mixer for s in steps):
                raise ValueError("a student of another mechanism is for arena runs; to put "
                                 "another mechanism into a pretrained encoder use attnarena "
                                 "linearize")
            check_recipe(teacher.model, steps)
        except ValueError as error:
            if not skip_unfit:
                raise
            log(f"{model}: {recipe_label(steps)} left out: {error}")
            continue
        fit.append(steps)
    train, test = corpus_split("train"), corpus_split("test")[:eval_sentences]
    data = pretrained_data(teacher, teacher, train, calibration=calibration, batch=batch,
                           device=device)
    reference = teacher.encode(test)
    label = str(model)
    base = {"source": label, "run": None, "task": "sentence embeddings",
            "mixer": "softmax (pretrained)", "mixer_options": {}, "metric": "mean_cosine",
            "higher_is_better": True, "calibration_batches": calibration, "batch": batch,
            "test_sentences": len(test), "hardware": env["hardware"]}

    def measured(encoder):
        return {**agreement(reference, encoder.encode(test)),
                "bytes": stored_bytes(encoder.model),
                "linear_bytes": linear_bytes(encoder.model), "params": weight_count(encoder.model)}

    float_id = row_key(label, "float", length, env["hardware"])
    log(f"measuring the uncompressed {label}")
    original = {**base, "recipe": "float", "steps": [], **measured(teacher),
                "outliers": outlier_measures(teacher.model, data.calibration, data.loss),
                "compress_seconds": 0.0}
    original["test"] = original["mean_cosine"]
    store.add_compress(float_id, original, env)
    done = [(float_id, original, teacher)]
    for steps in fit:
        name = recipe_label(steps)
        recipe = [s.to_dict() for s in steps]
        row_id = row_key(label, recipe, calibration, batch, length, len(test), env["hardware"])
        stored = None if rerun else store.compress_row(row_id)
        if stored is not None and Path(stored.get("folder", "")).is_dir():
            log(f"reusing stored results of {name} (pass --rerun to measure again)")
            done.append((row_id, stored, load_compressed(stored["folder"], device)))
            continue
        log(f"compressing {label} by {name}")
        torch.manual_seed(0)
        student = copy.deepcopy(teacher)
        start = time.perf_counter()
        student.model, reports = apply_recipe(student.model, steps, data, log=log)
        seconds = time.perf_counter() - start
        student.eval()
        folder = Path(results_dir) / "compressed" / row_id
        row = {**base, "recipe": name, "steps": recipe, **measured(student),
               "reports": [report_summary(r) for r in reports],
               "compress_seconds": seconds, "folder": str(folder)}
        row["test"] = row["mean_cosine"]
        save_compressed(folder, student.model, {"pretrained": label}, steps, reports, row)
        store.add_compress(row_id, row, env)
        done.append((row_id, row, student))
    log(f"timing {len(done)} encoders side by side")
    for _, _, encoder in done:
        encoder.eval()
    speeds = side_by_side([e for _, _, e in done], lambda e: _cells(e, length, device), device,
                          repeats)
    return record_timings(store, done, speeds, length, env)
