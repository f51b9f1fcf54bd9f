"""Running a suite: every run and speed case into the store, then the reports.

Each run is keyed by its resolved config: a run already done is skipped (unless
``rerun``), a run left 'running' by a killed process resumes from its checkpoint. Any
number of processes can run the same suite on one store at once: each run is claimed
through the store's lease, trained by one process, and every process waits for the runs
the others hold, so each finishes with the whole suite in the store.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from pathlib import Path

from attnarena.arena.artifacts import run_folder
from attnarena.arena.environment import environment, resolve_device
from attnarena.arena.report import format_metric
from attnarena.arena.store import Lease, Store, new_owner
from attnarena.arena.suite import load_suite
from attnarena.arena.train import DivergedError, train

POLL_SECONDS = 2.0


def speed_case_id(cfg, spec, length, env) -> str:
    key = {"mixer": spec.label, "length": length, "pass": cfg.pass_, "batch": cfg.batch,
           "heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": cfg.dtype,
           "causal": cfg.causal, "device": cfg.device, "hardware": env["hardware"],
           "threads": env["threads"], "torch": env["torch"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def train_claimed(store, run_id, resolved, owner, checkpoints, progress=True, save_dir=None):
    """Train a run whose lease ``owner`` holds and record how it ended.

    Returns (status, metrics or error text): status is "done", "failed", "diverged" or
    "lost" (another process took the lease over; nothing is written). Ctrl-C marks the
    run 'interrupted' (its checkpoint stays, so the next run resumes) and propagates.
    """
    with Lease(store.path, run_id, owner) as lease:
        try:
            metrics = train(resolved, checkpoint_dir=checkpoints, progress=progress,
                            save_dir=save_dir)
        except DivergedError as error:
            store.fail_run(run_id, str(error), owner, status="diverged")
            return "diverged", str(error)
        except KeyboardInterrupt:
            store.fail_run(run_id, "interrupted; run again to resume from its checkpoint",
                           owner, status="interrupted")
            raise
        except Exception as error:  # a failing run is recorded; the caller decides what next
            text = f"{type(error).__name__}: {error}"
            store.fail_run(run_id, f"{text}\n{traceback.format_exc(limit=3)}", owner)
            return "failed", text
    if lease.lost or not store.finish_run(run_id, metrics, owner):
        return "lost", "another process took this run over; its result was kept instead"
    return "done", metrics


def _result_line(status, outcome) -> str:
    if status != "done":
        return f"{status}: {outcome.splitlines()[0]}"
    metric = outcome["metric"]
    value = format_metric(outcome[f"test_{metric}"], metric)
    return (f"test {metric} {value}, "
            f"{outcome['tokens_per_s']:,.0f} tokens/s, {outcome['train_seconds']:.0f} s")


def _compress_runs(suite, store, store_path, out, device, rerun, log) -> int:
    """The suite's [[compress]] recipes on its finished runs; a recipe a model cannot take
    (head pruning without heads) is noted and skipped. Returns the recipes applied."""
    if not suite.compress:
        return 0
    from attnarena.arena.compress import compress_run

    done = 0
    for config in suite.runs:
        run_id = config.run_id()
        run = store.run(run_id)
        recipes = [steps for group in suite.compress if group.takes(config)
                   for steps in group.recipes]
        if run is None or run["status"] != "done" or not recipes:
            continue
        log(f"compressing {run_id} by {len(recipes)} recipe(s)")
        rows = compress_run(run_id, recipes, store_path=store_path, results_dir=out,
                            device=device, rerun=rerun, skip_unfit=True,
                            log=lambda line: log(line) if "left out" in line else None)
        done += len(rows) - 1
    return done


def run_suite(suite_name: str = "quick", *, store_path="results/arena.sqlite",
              out_dir="results", mixers=None, tasks=None, device="auto", rerun=False,
              progress=True, report=True, data_root=None, log=print) -> dict:
    """Run a suite; returns counts of what ran, was reused and failed. ``data_root``
    holds a folder per task that reads data (``ROOT/text``, ``ROOT/image``, ...);
    ``log`` receives one line per run started and finished."""
    device = resolve_device(device)
    suite = load_suite(suite_name, mixers=mixers, tasks=tasks, device=device,
                       data_root=data_root)  # validates all
    for note in suite.notes:
        log(note)
    store = Store(store_path)
    out = Path(out_dir)
    env = environment(device)
    owner, began = new_owner(), time.time()
    counts = {"trained": 0, "reused": 0, "failed": 0, "diverged": 0, "by_others": 0,
              "speed_measured": 0, "speed_reused": 0}
    total = len(suite.runs)
    pending = [(k, config, config.resolve(), config.run_id())
               for k, config in enumerate(suite.runs, start=1)]
    waiting_said = False
    try:
        while pending:
            held = []
            for k, config, resolved, run_id in pending:
                claim, row = store.claim_run(run_id, resolved, suite.name, env, owner,
                                             retake_before=began if rerun else None,
                                             retry_failed_before=began)
                if claim == "busy":
                    held.append((k, config, resolved, run_id))
                    continue
                if claim == "finished":
                    if row["status"] == "failed":  # failed meanwhile in another process
                        counts["failed"] += 1
                    elif (row["finished"] or 0.0) >= began:
                        counts["by_others"] += 1  # finished meanwhile by another process
                    else:
                        counts["reused"] += 1
                    continue
                checkpoints = out / "checkpoints" / run_id
                if rerun:
                    shutil.rmtree(checkpoints, ignore_errors=True)
                log(f"run {k} of {total}: {config.task} / {config.mixer} seed {config.seed}")
                status, outcome = train_claimed(store, run_id, resolved, owner, checkpoints,
                                                progress, run_folder(out, run_id))
                log(f"run {k} of {total}: {config.task} / {config.mixer} seed {config.seed}: "
                    + _result_line(status, outcome))
                if status == "done":
                    shutil.rmtree(checkpoints, ignore_errors=True)
                    counts["trained"] += 1
                elif status in ("failed", "diverged"):
                    counts[status] += 1
                else:  # "lost": another process took the run over and keeps its result
                    counts["by_others"] += 1
            if held and len(held) == len(pending):
                if not waiting_said:
                    log(f"waiting for {len(held)} run(s) that other processes are training")
                    waiting_said = True
                time.sleep(POLL_SECONDS)
            pending = held
        for cfg in suite.speed:
            def known(spec, length, cfg=cfg):
                if rerun:
                    return None
                row = store.speed_row(speed_case_id(cfg, spec, length, env))
                if row is not None:
                    counts["speed_reused"] += 1
                return row

            def record(spec, length, row, cfg=cfg):
                store.add_speed(speed_case_id(cfg, spec, length, env), row, suite.name, env)
                counts["speed_measured"] += 1

            from attnarena.arena.speed import run_speed

            log(f"speed sweep, {cfg.pass_} pass: {len(cfg.mixers)} mechanisms x "
                f"{len(cfg.lengths)} lengths")
            run_speed(cfg, progress=progress, known=known, on_row=record)
        counts["compressed"] = _compress_runs(suite, store, store_path, out, device, rerun,
                                              log)
        if report:
            from attnarena.arena.publish import build_reports

            counts["reports"] = [str(p) for p in build_reports(store, out)]
    finally:
        store.close()
    return counts
