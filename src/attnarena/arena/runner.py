"""Running a suite: every run and speed case into the store, then the reports.

Each run is keyed by its resolved config: a run already done is skipped (unless
``rerun``), a run left 'running' by a killed process resumes from its checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import traceback
from pathlib import Path

from attnarena.arena.environment import environment
from attnarena.arena.store import Store
from attnarena.arena.suite import load_suite
from attnarena.arena.train import train


def speed_case_id(cfg, spec, length, env) -> str:
    key = {"mixer": spec.label, "length": length, "pass": cfg.pass_, "batch": cfg.batch,
           "heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": cfg.dtype,
           "causal": cfg.causal, "device": cfg.device, "hardware": env["hardware"],
           "threads": env["threads"], "torch": env["torch"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def run_suite(suite_name: str = "quick", *, store_path="results/arena.sqlite",
              out_dir="results", mixers=None, tasks=None, device="cpu", rerun=False,
              progress=True, report=True, data_root=None) -> dict:
    """Run a suite; returns counts of what ran, was reused and failed. ``data_root``
    holds a folder per task that reads data (``ROOT/text``, ``ROOT/image``, ...)."""
    suite = load_suite(suite_name, mixers=mixers, tasks=tasks, device=device,
                       data_root=data_root)  # validates all
    store = Store(store_path)
    out = Path(out_dir)
    env = environment(device)
    counts = {"trained": 0, "reused": 0, "failed": 0, "speed_measured": 0, "speed_reused": 0}
    try:
        for config in suite.runs:
            resolved = config.resolve()
            run_id = config.run_id()
            checkpoints = out / "checkpoints" / run_id
            earlier = store.run(run_id)
            if earlier is not None and earlier["status"] == "done" and not rerun:
                counts["reused"] += 1
                continue
            if rerun or (earlier is not None and earlier["status"] == "failed"):
                shutil.rmtree(checkpoints, ignore_errors=True)
            store.start_run(run_id, resolved, suite.name, env)
            try:
                metrics = train(resolved, checkpoint_dir=checkpoints, progress=progress)
            except Exception as error:  # a failing run is recorded and the suite goes on
                store.fail_run(run_id, f"{type(error).__name__}: {error}\n"
                                       f"{traceback.format_exc(limit=3)}")
                counts["failed"] += 1
                continue
            store.finish_run(run_id, metrics)
            shutil.rmtree(checkpoints, ignore_errors=True)
            counts["trained"] += 1
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

            run_speed(cfg, progress=progress, known=known, on_row=record)
        if report:
            from attnarena.arena.report import build_reports

            counts["reports"] = [str(p) for p in build_reports(store, out)]
    finally:
        store.close()
    return counts
