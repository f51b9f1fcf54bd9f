"""``attnarena linearize``: linearize a subject, measure it, store the rows.

One driver for every subject (``attnarena.subject``): a trained softmax run of the arena,
or a pretrained encoder. Each stage gives one row in the store's ``linearize`` table: the
subject's quality measure after attention transfer and after fine-tuning (a run's task
metric; an encoder's agreement with the original on held-out sentences), the parameters
added and the training time; with ``lengths``, the time and peak memory at each length,
timed beside the original in the same call. The original model gets a row too. Finished
rows are reused; a run interrupted after stage 1 resumes from the student saved then.
A run is also compared with the same mechanism trained from scratch for as many steps.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from attnarena.arena.measure.environment import environment, resolve_device
from attnarena.arena.measure.timer import side_by_side
from attnarena.arena.run.checkpoint import untie
from attnarena.arena.store import Store, row_key


def linearize(teacher, config, *, label: str, store_path="results/arena.sqlite",
              results_dir="results", device="cpu", lengths=None, batch: int = 8,
              original_steps: int = 0, rerun: bool = False, log=print) -> list[dict]:
    """Linearize the subject ``teacher`` by ``config`` (a ``LinearizeConfig``) and store one
    row per stage: the original, after attention transfer, after fine-tuning (returned in
    that order). ``lengths``: time every stage beside the original at these lengths, on
    ``batch`` random sequences."""
    from attnarena.linearize.stages import (added_parameters, check_recipe, linearize_subject,
                                            swap, swapped_layers)
    from attnarena.registry import check_mixer_options

    env = environment(device)
    store = Store(store_path)
    check_recipe(teacher, config)  # before the original is measured
    check_mixer_options(config.mixer, dict(config.options))
    lengths = sorted(set(lengths)) if lengths else None
    recipe = config.to_dict()
    described = {k: v for k, v in teacher.describe().items() if k != "mixer_options"}
    base = {**described, "source": label, "mixer": config.mixer, "options": config.options,
            "keep_softmax": list(config.keep_softmax), "loss": config.loss,
            "transfer_steps": config.transfer_steps, "finetune_steps": config.finetune_steps,
            "recipe": recipe, **teacher.linearize_fields(), "hardware": env["hardware"]}
    if lengths:
        base["batch"] = batch
    key = (label, recipe, *teacher.identity(), lengths, batch if lengths else None,
           env["hardware"])
    ids = {stage: row_key(*key, stage) for stage in ("transfer", "finetune")}
    original_id = row_key(label, "original", *teacher.identity(), lengths,
                          batch if lengths else None, env["hardware"])

    def timed(*subjects):
        return side_by_side(list(subjects), lambda s: s.length_cells(lengths, batch, device),
                            device, repeats=5)

    original = None if rerun else store.linearize_row(original_id)
    if original is None:
        log(f"measuring the original {label}")
        original = {**base, "mixer": "softmax (original)", "stage": "original",
                    "options": {}, "keep_softmax": [], "transfer_steps": 0,
                    "finetune_steps": 0, **teacher.quality(teacher, device),
                    "params_added": 0, "train_seconds": 0.0, "steps": original_steps}
        if lengths:
            log(f"timing the original at lengths {lengths}")
            original["speed"] = timed(teacher)[0]
        store.add_linearize(original_id, original, env)
    rows = [original]

    found = {s: (None if rerun else store.linearize_row(i)) for s, i in ids.items()}
    if all(found.values()):
        log(f"reusing stored results of {config.mixer} (pass --rerun to measure again)")
        return rows + [found["transfer"], found["finetune"]]

    folder = Path(results_dir) / "linearize" / ids["finetune"]
    saved = folder / "after_transfer.safetensors"
    if rerun:
        shutil.rmtree(folder, ignore_errors=True)

    def measured(student, stage, seconds, steps):
        log(f"after {stage}: measuring {config.mixer}")
        swapped = swapped_layers(student)
        row = {**base, "stage": stage, "steps": steps, **student.quality(teacher, device),
               "params_added": added_parameters(student, swapped), "train_seconds": seconds,
               "keep_softmax": [i for i in range(len(student.blocks())) if i not in swapped]}
        if config.keep_softmax_auto:
            row["keep_softmax_rule"] = "largest attention-transfer loss after stage 1"
        if lengths:
            # timed beside the original in this call: the row's ratio never mixes two calls
            log(f"  timing beside the original at lengths {lengths}")
            row["baseline_speed"], row["speed"] = timed(teacher, student)
        return row

    def after_transfer(student, info):
        folder.mkdir(parents=True, exist_ok=True)
        save_file(untie(student.model.state_dict()), str(saved))
        row = measured(student, "transfer", time.perf_counter() - started, info["steps"])
        if "layer_losses" in info:
            row["layer_losses"] = info["layer_losses"]
        store.add_linearize(ids["transfer"], row, env)
        found["transfer"] = row

    start_from = None
    if saved.is_file() and found["transfer"] is not None:
        log(f"resuming after attention transfer from {saved}")
        start_from = copy.deepcopy(teacher)  # the same swaps, then the saved weights
        swap(start_from, replace(config, keep_softmax_auto=0,
                                 keep_softmax=tuple(found["transfer"]["keep_softmax"])))
        start_from.model.load_state_dict(load_file(str(saved)))
    started = time.perf_counter()
    log(f"linearizing {label} into {config.mixer}: {config.transfer_steps} transfer + "
        f"{config.finetune_steps} fine-tuning steps")
    student, info = linearize_subject(teacher, config, device=device, log=log,
                                      after_transfer=after_transfer, start_from=start_from)
    seconds = found["transfer"].get("train_seconds", 0.0) + info["finetune"]["seconds"]
    steps = found["transfer"].get("steps", 0) + info["finetune"]["steps"]
    final = measured(student, "finetune", seconds, steps)
    if student.saves_linearized:
        student.save(folder / "model")
        log(f"saved the linearized model in {folder / 'model'} ({student.load_hint})")
    saved.unlink(missing_ok=True)
    store.add_linearize(ids["finetune"], final, env)
    return rows + [found["transfer"], final]


def pretrained_subject(model, device, *, eval_sentences=None, contexts=(512, 2048),
                       eval_tokens=4096):
    """The subject of a pretrained model with its corpus: an encoder with the sentences of
    Python's documentation, a causal LM with its documents as token streams."""
    from attnarena.pretrained import (DecoderSubject, EncoderSubject, PretrainedDecoder,
                                      load_pretrained)
    from attnarena.pretrained.corpus import corpus_split, document_split
    from attnarena.pretrained.decoder_subject import token_stream

    loaded = load_pretrained(model, device=device)
    if isinstance(loaded, PretrainedDecoder):
        tokenizer = loaded.tokenizer
        return DecoderSubject.of(loaded, train=token_stream(tokenizer, document_split("train")),
                                 test=token_stream(tokenizer, document_split("test")),
                                 contexts=contexts, tokens=eval_tokens)
    return EncoderSubject.of(loaded, train=corpus_split("train"),
                             test=corpus_split("test")[:eval_sentences])


def linearize_pretrained(model, config, *, store_path="results/arena.sqlite",
                         results_dir="results", lengths=(128, 512), batch=8, device="auto",
                         eval_sentences=None, contexts=(512, 2048), eval_tokens=4096,
                         rerun=False, log=print) -> list[dict]:
    """``linearize`` the pretrained model ``model`` (a name such as "minilm" or "smollm2",
    or a directory), timed at ``lengths``. An encoder is measured on held-out sentences
    (``eval_sentences`` limits them), a causal LM by perplexity at ``contexts`` over the
    first ``eval_tokens`` held-out tokens."""
    device = resolve_device(device)
    teacher = pretrained_subject(model, device, eval_sentences=eval_sentences,
                                 contexts=contexts, eval_tokens=eval_tokens)
    return linearize(teacher, config, label=str(model), store_path=store_path,
                     results_dir=results_dir, device=device, lengths=lengths, batch=batch,
                     rerun=rerun, log=log)


def linearize_run(run_id, config, *, store_path="results/arena.sqlite", results_dir="results",
                  device="auto", rerun=False, log=print) -> list[dict]:
    """``linearize`` the trained softmax model of a finished run and, at the same number of
    optimizer steps, train ``config.mixer`` from scratch on the same task; store one row
    each. Returns the rows: original, transfer, finetune, scratch."""
    from attnarena.arena.run.artifacts import load_run_subject
    from attnarena.arena.run.train import train
    from attnarena.registry import mixer_info

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
    teacher = load_run_subject(run_id, results_dir=results_dir, device=device)
    rows = linearize(teacher, config, label=run_id, store_path=store_path,
                     results_dir=results_dir, device=device,
                     original_steps=run["metrics"]["steps"], rerun=rerun, log=log)

    resolved, total = teacher.run, config.transfer_steps + config.finetune_steps
    scratch_id = row_key(run_id, config.to_dict(), env["hardware"], "scratch")
    scratch = None if rerun else store.linearize_row(scratch_id)
    if scratch is None:
        log(f"training {config.mixer} from scratch on {resolved['task']} for {total} steps")
        train_cfg = resolved["train"]
        every = max(1, min(train_cfg["eval_every"], total))
        settings = {**dict(mixer_info(config.mixer).pretrained_options or ()),
                    **config.options}  # the same mechanism the linearized model holds
        settings = {**resolved, "mixer": config.mixer, "mixer_options": settings,
                    "train": {**train_cfg, "steps": total, "eval_every": every}}
        folder = Path(results_dir) / "linearize" / scratch_id
        metrics = train(settings, checkpoint_dir=folder / "checkpoint", progress=False)
        shutil.rmtree(folder, ignore_errors=True)
        scratch = {**{k: v for k, v in rows[1].items() if k not in ("steps", "test")},
                   "stage": "scratch", "test": metrics[f"test_{teacher.task.metric}"],
                   "steps": total, "params_added": None,
                   "train_seconds": metrics["train_seconds"]}
        store.add_linearize(scratch_id, scratch, env)
    return rows + [scratch]


def remeasure_speed(model, *, store_path="results/arena.sqlite", lengths=None, batch=None,
                    device="auto", log=print) -> list[dict]:
    """Time again every stored row of the pretrained encoder ``model`` on this machine,
    the original and each linearized architecture back to back (speed does not depend on
    the trained values, so the architecture is rebuilt from the row's recipe); for rows
    first measured on a busy machine. Returns the updated rows."""
    from attnarena.pretrained import EncoderSubject, load_pretrained, swap_attention

    device = resolve_device(device)
    env = environment(device)
    store = Store(store_path)
    source = str(model)
    stored = [(i, r) for i, r in store.linearize_items() if r["source"] == source
              and "mean_cosine" in r]
    if not stored:
        if any(r["source"] == source for _, r in store.linearize_items()):
            raise ValueError(f"--remeasure-speed times encoders again; {source!r} is a causal "
                             "LM: time its decoding with benchmarks/decode_smollm2.py")
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
                [EncoderSubject.of(original), EncoderSubject.of(encoder)],
                lambda s: s.length_cells(row_lengths, batch or row["batch"], device),
                device, repeats=5)
        baseline, speed = measured[key]
        row = {**row, "speed": baseline if row["stage"] == "original" else speed,
               "batch": batch or row["batch"], "hardware": env["hardware"]}
        if row["stage"] != "original":
            row["baseline_speed"] = baseline
        row.pop("environment", None)
        store.add_linearize(row_id, row, env)
        updated.append(row)
    return updated
