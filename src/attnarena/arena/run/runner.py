"""Running a suite: every run and speed case into the store, then the reports.

Each run is keyed by its resolved config: a run already done is skipped (unless
``rerun``), a run left 'running' by a killed process resumes from its checkpoint. Any
number of processes can run the same suite on one store at once: each run is claimed
through the store's lease, trained by one process, and every process waits for the runs
the others hold, so each finishes with the whole suite in the store.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from attnarena.arena.run.artifacts import run_folder
from attnarena.arena.run.checkpoint import newest_step
from attnarena.arena.measure.environment import environment, resolve_device
from attnarena.arena.report.style import plural
from attnarena.arena.report.style import format_metric
from attnarena.arena.store import Lease, Store, new_owner
from attnarena.arena.measure.speed import speed_case_id
from attnarena.arena.run.suite import MAX_RUNS, load_suite
from attnarena.arena.run.train import DivergedError, train

POLL_SECONDS = 2.0


def train_claimed(store, run, owner, checkpoints, progress=True, save_dir=None):
    """Train a run (a ``ResolvedRun``) whose lease ``owner`` holds and record how it ended.

    Returns (status, metrics or error text): status is "done", "failed", "diverged" or
    "lost" (another process took the lease over; nothing is written). Ctrl-C marks the
    run 'interrupted' (its checkpoint stays, so the next run resumes) and propagates.
    """
    run_id = run.id
    with Lease(store.location, run_id, owner) as lease:
        try:
            metrics = train(run, checkpoint_dir=checkpoints, progress=progress,
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


def note_takeover(store, run_id, owner, previous, checkpoints) -> None:
    """Say in the run's row how this process took over a run another left running or
    interrupted: resumed from the checkpoint it finds, or restarted (none here: the other
    process's checkpoints are not on storage this host sees)."""
    if previous is None:
        return
    step = newest_step(checkpoints)
    how = (f"resumed from its checkpoint at step {step}" if step is not None else
           f"restarted: no checkpoint in {checkpoints} (none written yet, or not on storage "
           "this host sees)")
    store.note_run(run_id, owner, takeover={"from": previous.get("owner"),
                                            "was": previous["status"], "how": how})


class RunFailed(ValueError):
    """A training run ended failed or diverged (recorded in the store)."""


def train_run(config, *, out="results", store_path=None, progress=True) -> tuple:
    """Train one run (a ``RunConfig``): resolved once, claimed and recorded in the store at
    ``store_path`` (None: in no store), its model saved under ``OUT/runs/RUN_ID``. Under
    torchrun only rank 0 writes. Returns (the ``ResolvedRun``, its metrics); a run that
    failed or diverged raises ``RunFailed``."""
    resolve_device(config.device)  # an unavailable device: one line, before anything
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # an unusable folder: likewise
    run = config.resolve()
    lead = int(os.environ.get("RANK", "0")) == 0
    checkpoints = out / "checkpoints" / run.id
    save_dir = run_folder(out, run.id) if lead else None
    if store_path is None or not lead:
        return run, train(run, checkpoint_dir=checkpoints, progress=progress,
                          save_dir=save_dir)
    store, owner = Store(store_path), new_owner()
    claim, row = store.claim_run(run.id, run.as_dict(), None,
                                 environment(resolve_device(config.device)), owner,
                                 retake_before=float("inf"), retry_failed_before=float("inf"))
    if claim == "busy":
        raise ValueError(f"run {run.id} is being trained by {row['owner']} on this store; "
                         "wait for it, or stop that process")
    note_takeover(store, run.id, owner, row, checkpoints)
    status, outcome = train_claimed(store, run, owner, checkpoints, progress, save_dir)
    if status != "done":
        raise RunFailed(f"run {run.id} {status}: {outcome} (recorded in {store.label})")
    return run, outcome


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
    from attnarena.arena.deploy.compress import compress_run

    done = 0
    for planned in suite.runs:
        run_id = planned.id
        run = store.run(run_id)
        recipes = [steps for group in suite.compress if group.takes(planned)
                   for steps in group.recipes]
        if run is None or run["status"] != "done" or not recipes:
            continue
        log(f"compressing {run_id} by {len(recipes)} recipe(s)")
        rows = compress_run(run_id, recipes, store_path=store_path, results_dir=out,
                            device=device, rerun=rerun, skip_unfit=True,
                            log=lambda line: log(line) if "left out" in line else None)
        done += len(rows) - 1
    return done


def _linearize_runs(suite, store, store_path, out, device, rerun, log) -> int:
    """The suite's [[linearize]] groups on its finished softmax runs, each teacher at its
    own seed, each mechanism also trained from scratch; rows already stored are reused.
    Returns the mechanisms linearized or reused."""
    if not suite.linearize:
        return 0
    from attnarena.arena.deploy.linearize import linearize_run

    done = 0
    for planned in suite.runs:
        run = store.run(planned.id)
        if run is None or run["status"] != "done":
            continue
        for group in suite.linearize:
            if not group.takes(planned):
                continue
            for config in group.configs(seed=planned.seed):
                log(f"linearizing {planned.id} ({planned.task}, seed {planned.seed}) into "
                    f"{config.mixer}")
                rows = linearize_run(planned.id, config, store_path=store_path,
                                     results_dir=out, device=device, rerun=rerun,
                                     log=lambda line: None)
                finetuned, scratch = rows[2], rows[3]
                log(f"  {config.mixer}: test {finetuned['test']:.4f} after transfer and "
                    f"fine-tuning, {scratch['test']:.4f} from scratch")
                done += 1
    return done


def _train_runs(suite, store, out, env, owner, began, rerun, progress, log) -> dict:
    """Claim and train the suite's runs until each is finished, here or by another process.
    Returns {run_id: how}: "trained", "failed" or "diverged" (here), "reused" (finished
    before ``began``), "others" (finished since by another process), "others_failed"."""
    outcome = {}
    total = len(suite.runs)
    pending = list(enumerate(suite.runs, start=1))
    waiting_said = False
    while pending:
        held = []
        for k, run in pending:
            run_id = run.id
            claim, row = store.claim_run(run_id, run.as_dict(), suite.name, env, owner,
                                         retake_before=began if rerun else None,
                                         retry_failed_before=began)
            if claim == "busy":
                held.append((k, run))
                continue
            if claim == "finished":
                if row["status"] == "failed":  # failed meanwhile in another process
                    outcome[run_id] = "others_failed"
                else:  # finished meanwhile by another process, or before this one began
                    outcome[run_id] = "others" if (row["finished"] or 0.0) >= began \
                        else "reused"
                continue
            checkpoints = out / "checkpoints" / run_id
            if rerun:
                shutil.rmtree(checkpoints, ignore_errors=True)
            note_takeover(store, run_id, owner, row, checkpoints)
            what = f"run {k} of {total}: {run.task} / {run.mixer} seed {run.seed}"
            log(what)
            status, result = train_claimed(store, run, owner, checkpoints, progress,
                                           run_folder(out, run_id))
            log(f"{what}: " + _result_line(status, result))
            if status == "done":
                shutil.rmtree(checkpoints, ignore_errors=True)
                outcome[run_id] = "trained"
            else:  # "lost": another process took the run over and keeps its result
                outcome[run_id] = "others" if status == "lost" else status
        if held and len(held) == len(pending):
            if not waiting_said:
                log(f"waiting for {len(held)} run(s) that other processes are training")
                waiting_said = True
            time.sleep(POLL_SECONDS)
        pending = held
    return outcome


def _start_jobs(jobs, threads, spec, log) -> list:
    """``jobs`` worker processes that train the suite's runs beside this one, each on
    ``threads`` threads; each writes what it did to a JSON file."""
    workers = []
    for job in range(2, jobs + 1):
        mine = {**spec, "threads": threads, "job": job, "parent": os.getpid(),
                "outcome_path": str(Path(spec["out_dir"]) / f".job-{job}-{os.getpid()}.json")}
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        process = subprocess.Popen([sys.executable, "-m", "attnarena.arena.run.runner",
                                    json.dumps(mine)], env=env)
        workers.append((process, Path(mine["outcome_path"])))
    log(f"training with {jobs} jobs at once, {plural(threads, 'thread')} each")
    return workers


def _finish_jobs(workers, log, stop=False) -> dict:
    """Wait for the workers (or stop them: they mark their runs interrupted, resumable)
    and return what they trained, {run_id: how}."""
    outcome = {}
    for process, path in workers:
        if stop:  # a Ctrl-C reached the workers too: give them time to record it first
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGTERM)
        if process.wait() != 0 and not stop:
            log(f"a training job ended with exit status {process.returncode}; the runs it "
                "held are taken over by the others when their leases go stale")
        if path.exists():
            _merge(outcome, json.loads(path.read_text()))
            path.unlink()
    return outcome


def _train_locally(suite, store, out, env, owner, began, rerun, progress, jobs, threads,
                   spec, log) -> dict:
    """This process trains, beside ``jobs - 1`` worker processes of this machine."""
    import torch

    workers = []
    if jobs > 1:
        out.mkdir(parents=True, exist_ok=True)
        per_job = max(1, threads // jobs)
        workers = _start_jobs(jobs, per_job, spec, log)
        torch.set_num_threads(per_job)
    try:
        train_env = {**env, "threads": torch.get_num_threads()} | \
            ({"jobs": jobs} if jobs > 1 else {})
        mine = _train_runs(suite, store, out, train_env, owner, began, rerun,
                           progress and jobs == 1,
                           log if jobs == 1 else lambda line: log("[job 1] " + line))
    except BaseException:
        _finish_jobs(workers, log, stop=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return _merge(mine, _finish_jobs(workers, log))


def _merge(outcome: dict, theirs: dict) -> dict:
    """What another worker did with a run ({run_id: how}) replaces "others" here."""
    for run_id, how in theirs.items():
        if run_id not in outcome or how in ("trained", "failed", "diverged"):
            outcome[run_id] = how
    return outcome


def _tally(outcome, counts):
    names = {"trained": "trained", "failed": "failed", "diverged": "diverged",
             "reused": "reused", "others": "by_others", "others_failed": "failed"}
    for how in outcome.values():
        counts[names[how]] += 1


def _to_train(store, run, rerun) -> bool:
    row = store.run(run.id)
    return rerun or row is None or row["status"] != "done"


def _stop_with_parent(parent: int, every: float = 1.0) -> None:
    """Interrupt this worker (as SIGTERM does: its run is recorded interrupted) once the
    process that started it is gone, even by SIGKILL, which it cannot forward."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def train_worker(spec: dict, log=print) -> dict:
    """Train the runs of the suite ``spec`` names beside other workers of the same store
    (no speed sweep, no reports) until every run is finished; returns {run_id: how}. The
    body of ``--jobs`` workers, of ``--launcher submitit`` jobs and of Slurm array tasks."""
    device = resolve_device(spec["device"])
    suite = load_suite(spec["suite"], mixers=spec["mixers"], tasks=spec["tasks"],
                       device=device, data_root=spec["data_root"], max_runs=spec["max_runs"])
    store, out = Store(spec["store_path"]), Path(spec["out_dir"])
    env = {**environment(device), "jobs": spec["jobs"]}
    try:
        return _train_runs(suite, store, out, env, new_owner(), spec["began"], spec["rerun"],
                           False, log)
    finally:
        store.close()


def _job_main(spec_text: str) -> int:
    """A worker of ``run_suite(jobs=N)``: ``train_worker`` in a process of its own, which
    writes what it did to a JSON file."""
    import torch

    spec = json.loads(spec_text)
    torch.set_num_threads(spec["threads"])
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stops like Ctrl-C
    _stop_with_parent(spec["parent"])
    prefix = f"[job {spec['job']}] "
    outcome = {}
    try:
        outcome = train_worker(spec, lambda line: print(prefix + line, flush=True))
    except KeyboardInterrupt:
        return 130
    finally:
        Path(spec["outcome_path"]).write_text(json.dumps(outcome))
    return 0


def _submitit_job(spec: dict, index: int) -> dict:
    """One job of ``--launcher submitit``: ``train_worker`` on its share of threads, its job
    id and array index recorded in its runs' environment."""
    import torch

    from attnarena.arena.run.launch import job_environment

    job_environment(index)
    threads = spec.get("threads") or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    if threads:
        torch.set_num_threads(threads)
    return train_worker(spec, lambda line: print(f"[worker {index}] {line}", flush=True))


def worker_spec(suite_name, *, store_path, out_dir, mixers=None, tasks=None, device="cpu",
                rerun=False, data_root=None, max_runs=MAX_RUNS, began=None, jobs=1) -> dict:
    """What a training worker needs to know, as plain JSON data."""
    return {"suite": str(suite_name), "mixers": mixers, "tasks": tasks, "device": device,
            "data_root": None if data_root is None else str(data_root),
            "store_path": str(store_path), "out_dir": str(out_dir), "rerun": rerun,
            "began": time.time() if began is None else began, "jobs": jobs,
            "max_runs": max_runs}


def run_suite(suite_name: str = "quick", *, store_path="results/arena.sqlite",
              out_dir="results", mixers=None, tasks=None, device="auto", rerun=False,
              progress=True, report=True, data_root=None, jobs=1, max_runs=MAX_RUNS,
              launcher="local", workers=1, cluster="auto", launcher_options=None,
              train_only=False, log=print) -> dict:
    """Run a suite; returns counts of what ran, was reused and failed. ``data_root``
    holds a folder per task that reads data (``ROOT/text``, ``ROOT/retrieval``, ...);
    ``jobs`` > 1 trains that many runs at once, in worker processes that share this
    machine's threads (small models on a CPU use one core each better than several
    together); the speed sweep runs after them, alone, on every thread. A suite of more
    than ``max_runs`` runs is refused before anything runs. ``log`` receives one line per
    run started and finished.

    ``launcher="submitit"`` trains the runs in ``workers`` submitit jobs instead (a Slurm
    job array, or local processes: ``cluster`` "auto", "slurm" or "local";
    ``launcher_options`` go to the executor's ``update_parameters``) and waits for them.
    ``train_only`` stops once every run is finished (no speed sweep, compression or
    reports): what each task of a cluster job array does."""
    for name, value in (("jobs", jobs), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if launcher not in ("local", "submitit"):
        raise ValueError(f"unknown launcher {launcher!r}; choose local or submitit")
    if launcher == "submitit" and jobs > 1:
        raise ValueError("--jobs starts processes here; with --launcher submitit say how "
                         "many jobs by --workers")
    device = resolve_device(device)
    if launcher == "submitit":
        from attnarena.arena.run.launch import check_launch

        check_launch(store_path, cluster, workers)
    suite = load_suite(suite_name, mixers=mixers, tasks=tasks, device=device,
                       data_root=data_root, max_runs=max_runs)  # validates all
    for note in suite.notes:
        log(note)
    cases = sum(len(c.mixers) * len(c.lengths) for c in suite.speed)
    log(f"suite {suite.name!r}: {len(suite.runs)} runs, {cases} speed cases")
    store = Store(store_path)
    out = Path(out_dir)
    env = environment(device)
    owner, began = new_owner(), time.time()
    counts = {"trained": 0, "reused": 0, "failed": 0, "diverged": 0, "by_others": 0,
              "speed_measured": 0, "speed_reused": 0}
    try:
        import torch

        threads = torch.get_num_threads()
        to_train = sum(_to_train(store, run, rerun) for run in suite.runs)
        # workers only for runs still to train (a finished suite starts none)
        jobs = max(1, min(jobs, to_train))
        spec = worker_spec(suite_name, store_path=store.location, out_dir=out, mixers=mixers,
                           tasks=tasks, device=device, rerun=rerun, data_root=data_root,
                           max_runs=max_runs, began=began, jobs=jobs)
        if launcher == "submitit":
            from attnarena.arena.run.launch import launch_submitit

            mine = {}
            if to_train:
                out.mkdir(parents=True, exist_ok=True)
                for theirs in launch_submitit(_submitit_job, {**spec, "jobs": workers},
                                              workers, out / "submitit", cluster,
                                              launcher_options or {}, log):
                    _merge(mine, theirs)
            # anything the jobs left (a job that died before its lease went stale) is
            # trained here, so the suite is whole when this returns
            mine.update({k: v for k, v in _train_runs(
                suite, store, out, env, owner, began, False, progress, log).items()
                if k not in mine})
        else:
            mine = _train_locally(suite, store, out, env, owner, began, rerun, progress,
                                  jobs, threads, spec, log)
        _tally(mine, counts)
        if train_only:
            return counts
        recorded = set()  # speed cases written by this call
        for cfg in suite.speed:
            def known(spec, length, cfg=cfg):
                if rerun:
                    return None
                row = store.speed_row(speed_case_id(cfg, spec, length, env))
                if row is not None:
                    counts["speed_reused"] += 1
                return row

            def record(spec, length, row, cfg=cfg):
                case = speed_case_id(cfg, spec, length, env)
                store.add_speed(case, row, suite.name, env)
                if case not in recorded:  # a row is written again with the pace after
                    recorded.add(case)
                    counts["speed_measured"] += 1

            from attnarena.arena.measure.speed import run_speed

            log(f"speed sweep, {cfg.pass_} pass: {len(cfg.mixers)} mechanisms x "
                f"{len(cfg.lengths)} lengths")
            run_speed(cfg, progress=progress, known=known, on_row=record)
        counts["compressed"] = _compress_runs(suite, store, store_path, out, device, rerun,
                                              log)
        counts["linearized"] = _linearize_runs(suite, store, store_path, out, device, rerun,
                                               log)
        if report:
            from attnarena.arena.report.publish import build_reports

            counts["reports"] = [str(p) for p in build_reports(store, out)]
    finally:
        store.close()
    return counts


if __name__ == "__main__":
    sys.exit(_job_main(sys.argv[1]))
