"""``attnarena linearize``: linearize a pretrained encoder, measure it, store the rows.

Each stage of a recipe gives one row in the store's ``linearize`` table: agreement with
the teacher on the held-out sentences (mean cosine of sentence embeddings, top-10
neighbour overlap, Spearman correlation of pairwise similarities), encoder time and peak
memory at the given lengths, and the parameters added. The original model gets a row
too, as the speed baseline. Finished rows are reused; a run interrupted after stage 1
resumes from the student saved then.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import torch

from attnarena.arena.compressed import row_key
from attnarena.arena.compress import side_by_side
from attnarena.arena.environment import environment, resolve_device
from attnarena.arena.store import Store


def _encoder_cells(encoder, lengths, batch, device) -> dict:
    """{(length,): a no-grad forward of ``batch`` random sequences at that length}, the
    cells ``side_by_side`` times."""
    encoder.eval()
    vocab = encoder.config.vocab_size
    limit = getattr(encoder.config, "max_position_embeddings", None)
    cells = {}
    for length in lengths:
        if limit is not None and length > limit:
            raise ValueError(f"length {length} exceeds the model's {limit} positions")
        ids = torch.randint(1, vocab, (batch, length), device=device)

        @torch.no_grad()
        def call(ids=ids):
            encoder(ids, torch.ones_like(ids))

        cells[(str(length),)] = call
    return cells


def encoder_speed(encoder, lengths, batch=8, repeats=3, device="cpu") -> dict:
    """Median forward time (ms, with its quartiles) and peak memory (MiB) of the encoder on
    ``batch`` random sequences at each length: {length: {"ms": ..., "peak_mb": ...}}."""
    return side_by_side([encoder], lambda e: _encoder_cells(e, lengths, batch, device),
                        device, repeats)[0]


def linearize_pretrained(model, config, *, store_path="results/arena.sqlite",
                         results_dir="results", lengths=(128, 512), batch=8, device="auto",
                         eval_sentences=None, rerun=False, log=print) -> list[dict]:
    """Linearize the pretrained encoder ``model`` (a name such as "minilm" or a
    directory) by ``config`` (a ``LinearizeConfig``) and store one row per stage.

    ``eval_sentences`` limits the held-out sentences measured (default: all of them).

    Returns the rows: the original model, after attention transfer, after fine-tuning.
    """
    from attnarena.compress.linearize import agreement, linearize_encoder, new_parameters
    from attnarena.pretrained import attention_layers, load_pretrained
    from attnarena.pretrained.corpus import corpus_split
    from attnarena.pretrained.swap import ArenaSelfAttention, check_swap, resolve_layers

    device = resolve_device(device)
    env = environment(device)
    store = Store(store_path)
    check_swap(config.mixer, config.options)
    teacher = load_pretrained(model, device=device)
    resolve_layers(len(attention_layers(teacher.model)), None, config.keep_softmax)
    train, test = corpus_split("train"), corpus_split("test")[:eval_sentences]
    source = str(model)
    recipe = config.to_dict()
    base = {"source": source, "mixer": config.mixer, "options": config.options,
            "keep_softmax": list(config.keep_softmax), "loss": config.loss,
            "transfer_steps": config.transfer_steps, "finetune_steps": config.finetune_steps,
            "recipe": recipe, "train_sentences": len(train), "test_sentences": len(test),
            "batch": batch, "hardware": env["hardware"]}
    lengths = sorted(set(lengths))
    key = (source, recipe, len(train), len(test), lengths, batch, env["hardware"])
    ids = {stage: row_key(*key, stage) for stage in ("transfer", "finetune")}
    original_id = row_key(source, "original", lengths, batch, env["hardware"])
    rows = []

    original = None if rerun else store.linearize_row(original_id)
    if original is None:
        log(f"measuring the original {source} at lengths {lengths}")
        original = {**base, "mixer": "softmax (original)", "stage": "original",
                    "options": {}, "keep_softmax": [], "transfer_steps": 0,
                    "finetune_steps": 0, "mean_cosine": 1.0, "top10_overlap": 1.0,
                    "spearman": 1.0, "params_added": 0, "train_seconds": 0.0, "steps": 0,
                    "speed": encoder_speed(teacher, lengths, batch, device=device)}
        store.add_linearize(original_id, original, env)
    rows.append(original)

    found = {s: (None if rerun else store.linearize_row(i)) for s, i in ids.items()}
    if all(found.values()):
        log(f"reusing stored results of {config.mixer} (pass --rerun to measure again)")
        return rows + [found["transfer"], found["finetune"]]

    folder = Path(results_dir) / "linearize" / ids["finetune"]
    saved = folder / "after_transfer"
    if rerun:
        shutil.rmtree(folder, ignore_errors=True)
    reference = teacher.encode(test)

    def added(student):
        return sum(p.numel() for b in attention_layers(student.model)
                   if isinstance(b.self, ArenaSelfAttention) for p in new_parameters(b))

    def measured(student, stage, seconds, steps):
        log(f"after {stage}: agreement on {len(test)} held-out sentences, then timing "
            f"beside the original at lengths {lengths}")
        # timed beside the original in this call: the row's ratio never mixes two calls
        baseline, speed = side_by_side([teacher, student],
                                       lambda e: _encoder_cells(e, lengths, batch, device),
                                       device, repeats=3)
        return {**base, "stage": stage, "steps": steps,
                **agreement(reference, student.encode(test)),
                "params_added": added(student), "train_seconds": seconds,
                "speed": speed, "baseline_speed": baseline}

    def after_transfer(student, info):
        student.save(saved)
        row = measured(student, "transfer", time.perf_counter() - started, info["steps"])
        store.add_linearize(ids["transfer"], row, env)
        found["transfer"] = row

    start_from = None
    if (saved / "attnarena_swap.json").is_file() and found["transfer"] is not None:
        log(f"resuming after attention transfer from {saved}")
        start_from = load_pretrained(saved, device=device)
    started = time.perf_counter()
    student, info = linearize_encoder(teacher, config, train, log=log,
                                      after_transfer=after_transfer, start_from=start_from)
    seconds = (found["transfer"] or {}).get("train_seconds", 0.0) + info["finetune"]["seconds"]
    steps = found["transfer"].get("steps", 0) + info["finetune"]["steps"]
    final = measured(student, "finetune", seconds, steps)
    student.save(folder / "model")
    shutil.rmtree(saved, ignore_errors=True)
    store.add_linearize(ids["finetune"], final, env)
    log(f"saved the linearized model in {folder / 'model'} (load it with "
        "attnarena.pretrained.load_pretrained)")
    return rows + [found["transfer"], final]


def linearize_run(run_id, config, *, store_path="results/arena.sqlite", results_dir="results",
                  device="auto", rerun=False, log=print) -> list[dict]:
    """Linearize the trained softmax model of a finished run by ``config``'s two stages and,
    at the same number of optimizer steps, train ``config.mixer`` from scratch on the same
    task; store one row each (and one for the softmax model itself).

    Returns the rows: original, transfer, finetune (both stages), scratch.
    """
    from attnarena.arena.artifacts import load_run
    from attnarena.arena.train import evaluate, train
    from attnarena.compress.linearize_model import (finetune_task, mixer_blocks,
                                                    new_mixer_parameters, swap_mixers,
                                                    transfer_mixers)
    from attnarena.registry import mixer_info
    from attnarena.seeds import eval_seed
    from attnarena.tasks import create_task

    device = resolve_device(device)
    env = environment(device)
    store = Store(store_path)
    run = store.run(run_id)
    if run is None or run["status"] != "done":
        state = "not in the store" if run is None else f"{run['status']}, not done"
        raise ValueError(f"run {run_id!r} is {state} ({store_path}); linearize a finished "
                         "softmax run (ids are in the leaderboard)")
    if run["mixer"] != "softmax":
        raise ValueError(f"run {run_id!r} trained {run['mixer']!r}; linearization starts from a "
                         "softmax run")
    resolved = run["config"]
    teacher = load_run(run_id, results_dir=results_dir, device=device)
    task = create_task(resolved["task"], **resolved["task_options"])
    task.prepare()
    train_cfg, seed = resolved["train"], resolved["seed"]
    examples, test_seed = train_cfg["eval_examples"], eval_seed(seed, "test")
    metric = task.metric
    total = config.transfer_steps + config.finetune_steps
    base = {"source": run_id, "task": resolved["task"], "mixer": config.mixer,
            "options": config.options, "keep_softmax": list(config.keep_softmax),
            "transfer_steps": config.transfer_steps, "finetune_steps": config.finetune_steps,
            "recipe": config.to_dict(), "metric": metric, "hardware": env["hardware"]}
    key = (run_id, config.to_dict(), env["hardware"])
    ids = {s: row_key(*key, s) for s in ("transfer", "finetune", "scratch")}
    original_id = row_key(run_id, "original")
    rows = []
    original = None if rerun else store.linearize_row(original_id)
    if original is None:
        score = evaluate(teacher, task, examples, test_seed, device, "test")["metric"]
        original = {**base, "mixer": "softmax (original)", "stage": "original", "options": {},
                    "keep_softmax": [], "transfer_steps": 0, "finetune_steps": 0,
                    "test": score, "steps": run["metrics"]["steps"], "params_added": 0}
        store.add_linearize(original_id, original, env)
    rows.append(original)
    found = {s: (None if rerun else store.linearize_row(i)) for s, i in ids.items()}

    if found["transfer"] is None or found["finetune"] is None:
        log(f"linearizing {run_id} into {config.mixer}: {config.transfer_steps} transfer + "
            f"{config.finetune_steps} fine-tuning steps")
        torch.manual_seed(config.seed)
        student = copy.deepcopy(teacher)
        swapped = swap_mixers(student, config.mixer, keep_softmax=config.keep_softmax,
                              **config.options)
        added = sum(p.numel() for i in swapped
                    for p in new_mixer_parameters(mixer_blocks(student)[i].mixer))
        batch = train_cfg["batch"]
        start = time.perf_counter()
        first = transfer_mixers(teacher, student, task, swapped, steps=config.transfer_steps,
                                batch_size=batch, lr=config.transfer_lr, seed=seed,
                                device=device)
        seconds = time.perf_counter() - start
        score = evaluate(student, task, examples, test_seed, device, "test")["metric"]
        found["transfer"] = {**base, "stage": "transfer", "test": score,
                             "steps": first["steps"], "params_added": added,
                             "train_seconds": seconds}
        store.add_linearize(ids["transfer"], found["transfer"], env)
        start = time.perf_counter()
        second = finetune_task(student, task, swapped, steps=config.finetune_steps,
                               batch_size=batch, lr=config.finetune_lr, rank=config.lora_rank,
                               seed=seed, device=device)
        seconds += time.perf_counter() - start
        score = evaluate(student, task, examples, test_seed, device, "test")["metric"]
        found["finetune"] = {**base, "stage": "finetune", "test": score,
                             "steps": first["steps"] + second["steps"],
                             "params_added": added, "train_seconds": seconds}
        store.add_linearize(ids["finetune"], found["finetune"], env)

    if found["scratch"] is None:
        log(f"training {config.mixer} from scratch on {resolved['task']} for {total} steps")
        every = max(1, min(train_cfg["eval_every"], total))
        settings = {**dict(mixer_info(config.mixer).pretrained_options or ()),
                    **config.options}  # the same mechanism the linearized model holds
        scratch = {**resolved, "mixer": config.mixer, "mixer_options": settings,
                   "train": {**train_cfg, "steps": total, "eval_every": every}}
        folder = Path(results_dir) / "linearize" / ids["scratch"]
        metrics = train(scratch, checkpoint_dir=folder / "checkpoint", progress=False)
        shutil.rmtree(folder, ignore_errors=True)
        found["scratch"] = {**base, "stage": "scratch", "test": metrics[f"test_{metric}"],
                            "steps": total, "params_added": None,
                            "train_seconds": metrics["train_seconds"]}
        store.add_linearize(ids["scratch"], found["scratch"], env)
    return rows + [found["transfer"], found["finetune"], found["scratch"]]


def remeasure_speed(model, *, store_path="results/arena.sqlite", lengths=None, batch=None,
                    device="auto", log=print) -> list[dict]:
    """Time again every stored row of the pretrained encoder ``model`` on this machine,
    the original and each linearized architecture back to back (speed does not depend on
    the trained values, so the architecture is rebuilt from the row's recipe); for rows
    first measured on a busy machine. Returns the updated rows."""
    from attnarena.pretrained import load_pretrained, swap_attention

    device = resolve_device(device)
    env = environment(device)
    store = Store(store_path)
    source = str(model)
    stored = [(i, r) for i, r in store.linearize_items() if r["source"] == source
              and "mean_cosine" in r]
    if not stored:
        raise ValueError(f"no linearization of {source!r} in {store_path}")
    original = load_pretrained(model, device=device)
    measured = {}
    updated = []
    for row_id, row in stored:
        row_lengths = lengths or sorted(int(n) for n in row["speed"])
        key = (row["mixer"], json.dumps(row.get("options"), sort_keys=True),
               tuple(row.get("keep_softmax") or ()), tuple(row_lengths))
        if key not in measured:
            encoder = copy.deepcopy(original)
            if row["stage"] != "original":
                swap_attention(encoder.model, row["mixer"], keep_softmax=row["keep_softmax"],
                               **row.get("options", {}))
            log(f"timing {row['mixer']} at lengths {row_lengths}, beside the original")
            measured[key] = side_by_side(
                [original, encoder],
                lambda e: _encoder_cells(e, row_lengths, batch or row["batch"], device),
                device, repeats=3)
        baseline, speed = measured[key]
        row = {**row, "speed": baseline if row["stage"] == "original" else speed,
               "batch": batch or row["batch"], "hardware": env["hardware"]}
        if row["stage"] != "original":
            row["baseline_speed"] = baseline
        row.pop("environment", None)
        store.add_linearize(row_id, row, env)
        updated.append(row)
    return updated
