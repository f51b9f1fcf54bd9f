"""Running suites: each run once across processes and jobs, reused from the store, resumed
after a kill, workers that stop with their parent."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnarena.arena.report.leaderboard import format_rows, leaderboard_rows
from attnarena.arena.run.runner import run_suite
from attnarena.arena.store import Store
from attnarena.cli import main
from conftest import tiny_suite

SUITE = """
name = "together"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "linear", "gla", "retention"]
seeds = [0, 1]
train = { steps = 40, eval_every = 20, eval_examples = 32, batch = 8 }
model = { dim = 16, depth = 1, heads = 2 }
"""


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "attnarena.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


SLOW = """
name = "slow"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "gla"]
train = { steps = 100000, eval_every = 50, eval_examples = 16, batch = 4 }
model = { dim = 16, depth = 1, heads = 2 }
"""


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_concurrent_processes_train_each_run_once(tmp_path, store_at):
    suite = tmp_path / "it.toml"
    suite.write_text(SUITE)
    store, out = store_at, tmp_path / "out"
    args = [sys.executable, "-m", "attnarena", "run", "--suite", str(suite), "--store",
            str(store), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    trained = []
    for stdout, _ in outputs:
        line = next(x for x in stdout.splitlines() if x.startswith("runs: "))
        trained.append(int(line.split()[1]))
    assert sum(trained) == 8  # every run trained by exactly one of the two processes
    rows = Store(store, readonly=True).runs()
    assert len(rows) == 8
    assert all(r["status"] == "done" and r["error"] is None for r in rows)


def test_suite_runs_once_then_reuses_and_reports(tmp_path, capsys, store_at):
    suite, store = tiny_suite(tmp_path), store_at
    first = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False)
    assert first["trained"] == 2 and first["speed_measured"] == 2
    second = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False)
    assert second["trained"] == 0 and second["reused"] == 2 and second["speed_reused"] == 2
    third = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False, rerun=True)
    assert third["trained"] == 2
    assert len(Store(store, readonly=True).runs()) == 2
    for name in ("leaderboard.md", "quality_vs_speed.png", "training_curves.png",
                 "speed-fwd.png"):
        assert (tmp_path / name).exists()
    board = (tmp_path / "leaderboard.md").read_text()
    assert "All rows: preset cpu, seed 0, dim 16" in board and "\n| softmax | 0." in board
    rows = leaderboard_rows(Store(store))
    assert json.loads(format_rows(rows, "json"))[0]["task"] == "copy"
    assert format_rows(rows, "csv").splitlines()[0].startswith("task,mixer,preset")
    assert main(["report", "--store", str(store), "--out", str(tmp_path), "--format",
                 "csv"]) == 0
    assert "copy,linear,cpu,0," in capsys.readouterr().out


def test_jobs_train_a_suite_together_each_run_once(tmp_path):
    """--jobs 2: a worker process trains beside this one on half the threads; every run is
    trained once, counted once, and its environment says how it was trained."""
    suite, store = tiny_suite(tmp_path, steps=60, every=20), tmp_path / "arena.sqlite"
    lines = []
    counts = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False, jobs=2,
                       log=lines.append)
    assert counts["trained"] == 2 and counts["by_others"] == 0 and counts["failed"] == 0
    assert counts["speed_measured"] == 2
    assert any("2 jobs at once" in line for line in lines)
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT status, environment FROM runs").fetchall()
    assert [status for status, _ in rows] == ["done", "done"]
    threads = max(1, torch.get_num_threads() // 2)
    for _, env in rows:
        assert json.loads(env)["jobs"] == 2 and json.loads(env)["threads"] == threads
    assert not list(tmp_path.glob(".job-*"))  # the workers' reports are read and removed
    board = (tmp_path / "leaderboard.md").read_text()
    per_run = f"{threads} thread{'s' if threads > 1 else ''} per run"
    assert f"trained ({per_run}, 2 runs at once)." in board
    again = []  # a finished suite starts no workers
    assert run_suite(suite, store_path=store, out_dir=tmp_path, progress=False, jobs=2,
                     log=again.append)["reused"] == 2
    assert not any("jobs at once" in line for line in again)
    single = run_suite(suite, store_path=tmp_path / "single.sqlite", out_dir=tmp_path / "s",
                       progress=False)
    assert single["trained"] == 2
    with sqlite3.connect(store) as db, sqlite3.connect(tmp_path / "single.sqlite") as ref:
        got = dict(db.execute("SELECT id, metrics FROM runs").fetchall())
        want = dict(ref.execute("SELECT id, metrics FROM runs").fetchall())
    assert set(got) == set(want)
    for run_id in got:
        assert json.loads(got[run_id])["test_loss"] == pytest.approx(
            json.loads(want[run_id])["test_loss"], rel=1e-4)


def test_job_worker_trains_what_is_left_and_reports_it(tmp_path):
    from attnarena.arena.run.runner import _job_main

    suite, store = tiny_suite(tmp_path), tmp_path / "arena.sqlite"
    report = tmp_path / "job.json"
    spec = {"suite": suite, "mixers": ["linear"], "tasks": None, "device": "cpu",
            "data_root": None, "store_path": str(store), "out_dir": str(tmp_path),
            "rerun": False, "began": time.time(), "jobs": 2, "threads": 1, "job": 2,
            "outcome_path": str(report), "max_runs": 10, "parent": os.getppid()}
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    try:
        assert _job_main(json.dumps(spec)) == 0
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGTERM, handler)
    outcome = json.loads(report.read_text())
    assert list(outcome.values()) == ["trained"]
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT mixer, status FROM runs").fetchall() == [("linear", "done")]
    counts = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False,
                       report=False)
    assert counts["trained"] == 1 and counts["reused"] == 1


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs must be a positive integer, got 0"):
        run_suite(tiny_suite(tmp_path), store_path=tmp_path / "a.sqlite", out_dir=tmp_path,
                  jobs=0)
    with pytest.raises(SystemExit):
        main(["run", "--jobs", "0"])


def test_killed_suite_resumes_with_same_results(tmp_path, store_at):
    suite = tiny_suite(tmp_path, steps=400, every=10)
    reference = tmp_path / "reference.sqlite"
    run_suite(suite, store_path=reference, out_dir=tmp_path / "ref", progress=False)

    store, out = store_at, tmp_path / "out"
    args = ["run", "--suite", suite, "--store", str(store), "--out", str(out), "--quiet"]
    process = _run_cli(args)
    deadline = time.time() + 120
    while not list(out.glob("checkpoints/*/step-*/state.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    statuses = [r["status"] for r in Store(store, readonly=True).runs()]
    assert "running" in statuses  # killed mid-run
    assert _run_cli(args).wait() == 0
    mine, ref = Store(store, readonly=True), Store(reference, readonly=True)
    got = {r["id"]: r for r in mine.runs()}
    want = {r["id"]: r["metrics"] for r in ref.runs()}
    assert len(mine.speed_rows()) == 2
    assert set(got) == set(want)
    for run_id, row in got.items():
        assert row["status"] == "done"
        assert row["metrics"]["test_accuracy"] == want[run_id]["test_accuracy"]
        assert row["metrics"]["history"] == want[run_id]["history"]
    # the run killed mid-way says how it was taken over (the checkpoint is on this host)
    [taken] = [r for r in got.values() if "takeover" in r["environment"]]
    assert taken["environment"]["takeover"]["how"].startswith("resumed from its checkpoint")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads parent pids from /proc")
def test_a_worker_stops_and_records_its_run_when_its_parent_is_killed(tmp_path):
    suite, store = tmp_path / "slow.toml", tmp_path / "a.sqlite"
    suite.write_text(SLOW)
    parent = subprocess.Popen([sys.executable, "-m", "attnarena", "run", "--suite", str(suite),
                               "--store", str(store), "--out", str(tmp_path / "out"),
                               "--jobs", "2", "--quiet"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if store.exists() and len(Store(store).runs(status="running")) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the two runs never started")
        [worker] = _children(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 60
        while time.time() < deadline and Path(f"/proc/{worker}").exists() \
                and "Z" not in Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1][:3]:
            time.sleep(0.5)
        assert not Path(f"/proc/{worker}").exists() or \
            "Z" in Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1][:3]
        statuses = sorted(r["status"] for r in Store(store).runs())
        assert "interrupted" in statuses  # the worker recorded its own run
    finally:
        for pid in [parent.pid, *_children(parent.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
