"""Suites spread over processes and machines: claims under contention on both databases,
copying between stores, a PostgreSQL server that goes away and comes back, URLs that
cannot be opened, the Slurm array script and the submitit launcher (its local executor)."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attnarena.arena.report.leaderboard import format_rows, leaderboard_rows
from attnarena.arena.run.config import RunConfig
from attnarena.arena.store import Store, StoreError
from attnarena.arena.store.local_server import LocalPostgres
from attnarena.cli import main
from conftest import tiny_suite

ROOT = Path(__file__).resolve().parents[1]

CLAIMER = """
import os, sys, time
from attnarena.arena.run.config import RunConfig
from attnarena.arena.store import Store
store, owner, go = Store(sys.argv[1]), sys.argv[2], sys.argv[3]
resolved = RunConfig(task="copy", mixer="gla").resolve()
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
got = [f"r{k}" for k in range(30)
       if store.claim_run(f"r{k}", resolved, None, {}, owner)[0] == "claimed"]
print(" ".join(got))
"""


def test_claims_under_contention_give_each_run_to_one_process(store_at, tmp_path):
    Store(store_at).close()  # made once, before the race
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, store_at, f"far-{k}:1:x",
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(4)]
    for p in procs:  # every claimer connected and waiting: then all start at once
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    claimed = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        claimed += out.split()
    assert sorted(claimed) == sorted(f"r{k}" for k in range(30))  # each once, none lost
    owners = {r["id"]: r["owner"] for r in Store(store_at, readonly=True).runs()}
    assert len(owners) == 30 and all(o.startswith("far-") for o in owners.values())


def _fill(store):
    """A store with runs of every state and a row in each row table."""
    resolved = RunConfig(task="copy", mixer="gla").resolve()
    metrics = {"metric": "accuracy", "test_accuracy": 0.75, "best_val_accuracy": 0.8,
               "history": [], "params": 10, "tokens_per_s": 100.0, "peak_mem_mb": 1.0,
               "steps": 2, "train_seconds": 0.1}
    for run_id, end in (("done", "done"), ("left", None), ("bad", "failed")):
        store.claim_run(run_id, {**resolved, "seed": len(run_id)}, "s", {"host": "h"}, "me")
        if end == "done":
            store.finish_run(run_id, metrics, "me")
        elif end == "failed":
            store.fail_run(run_id, "boom", "me")
    store.add_speed("c1", {"mixer": "gla", "length": 64, "pass": "fwd", "status": "ok",
                           "ms": 1.5}, "s", {"hardware": "x"})
    store.add_compress("k1", {"source": "done", "recipe": "int8", "accuracy": 0.7}, {})
    store.add_linearize("l1", {"source": "minilm", "mixer": "hedgehog", "stage": "1"}, {})
    return metrics


def test_store_copy_moves_every_row_both_ways_and_is_idempotent(tmp_path, postgres_server,
                                                                 capsys):
    laptop = str(tmp_path / "laptop.sqlite")
    team = postgres_server.create_database("copy_both_ways")
    metrics = _fill(Store(laptop))
    assert main(["store", "copy", laptop, team]) == 0
    out = capsys.readouterr().out
    assert "runs: 3 added, 0 replaced, 0 kept" in out and "pw-for-tests" not in out
    a, b = Store(laptop, readonly=True), Store(team, readonly=True)
    assert [(r["id"], r["status"], r["metrics"]) for r in a.runs()] == \
        [(r["id"], r["status"], r["metrics"]) for r in b.runs()]
    for table in ("speed", "compress", "linearize"):
        assert a.row_items(table) == b.row_items(table)
    assert format_rows(leaderboard_rows(a), "json") == format_rows(leaderboard_rows(b), "json")
    # again: nothing changes
    assert main(["store", "copy", laptop, team]) == 0
    assert "runs: 0 added, 0 replaced, 3 kept" in capsys.readouterr().out
    # the team's database finishes the run the laptop left running; copied back, the
    # finished row replaces the running one, and the laptop's finished rows stay
    Store(team).claim_run("left", {**RunConfig(task="copy", mixer="gla").resolve(),
                                   "seed": 4}, "s", {}, "cluster", stale_after=0.0)
    Store(team).finish_run("left", metrics, "cluster")
    assert main(["store", "copy", team, laptop]) == 0
    assert "runs: 0 added, 1 replaced, 2 kept" in capsys.readouterr().out
    assert Store(laptop).run("left")["status"] == "done"
    assert main(["store", "copy", laptop, laptop]) == 2
    assert "same store" in capsys.readouterr().err


def test_a_url_that_cannot_be_opened_is_one_line_without_its_password(postgres_server,
                                                                      capsys):
    wrong = postgres_server.url("postgres").replace("pw-for-tests", "not-the-password")
    unreachable = "postgresql://attnarena:hunter2@127.0.0.1:1/arena"
    for url, cause in ((wrong, "password authentication failed"),
                       (unreachable, "Connection refused")):
        assert main(["report", "--store", url]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and cause in err and ":***@" in err
        assert "not-the-password" not in err and "hunter2" not in err
    empty = postgres_server.create_database("nothing_here")
    assert main(["report", "--store", empty]) == 2
    assert "no results store in the database" in capsys.readouterr().err


@pytest.fixture
def own_server():
    """A server of the test's own, to stop and start."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="attnarena-pg-own-")
    server = LocalPostgres(folder, durable=False).start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_server_that_goes_away_is_waited_for_and_nothing_finished_is_lost(
        own_server, monkeypatch, capsys):
    monkeypatch.setenv("ATTNARENA_STORE_PATIENCE", "60")
    url = own_server.create_database("arena")
    store = Store(url)
    resolved = RunConfig(task="copy", mixer="gla").resolve()
    assert store.claim_run("a", resolved, None, {}, "me")[0] == "claimed"
    own_server.stop("immediate")  # as a crash would
    assert store.heartbeat("a", "me")  # unreachable: counted as renewed, tried again later
    back = threading.Timer(2.0, own_server.start)
    back.start()
    began = time.time()
    assert store.finish_run("a", {"params": 1}, "me")  # waits for the server, then writes
    back.join()
    assert time.time() - began >= 1.5
    assert Store(url, readonly=True).run("a")["status"] == "done"
    assert "is unreachable" in capsys.readouterr().err
    # a server that stays away: after the patience, one line
    monkeypatch.setenv("ATTNARENA_STORE_PATIENCE", "1")
    late = Store(url)
    own_server.stop("immediate")
    with pytest.raises(StoreError, match="unreachable for"):
        late.claim_run("b", resolved, None, {}, "me")
    own_server.start()


def test_the_slurm_array_script_trains_the_suite_once_and_task_0_reports(tmp_path,
                                                                         postgres_server):
    url = postgres_server.create_database("slurm_array")
    env = {**os.environ, "ATTNARENA_SUITE": tiny_suite(tmp_path), "ATTNARENA_STORE": url,
           "ATTNARENA_OUT": str(tmp_path / "out"), "SLURM_CPUS_PER_TASK": "1",
           "ATTNARENA": f"{sys.executable} -m attnarena", "SLURM_ARRAY_JOB_ID": "4242"}
    script = ROOT / "docs" / "cluster" / "attnarena-array.sbatch"
    tasks = [subprocess.Popen(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(k),
                                                          "ATTNARENA_HOST": f"node{k}"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    for task in tasks:
        out, err = task.communicate(timeout=300)
        assert task.returncode == 0, err[-2000:]
    runs = Store(url, readonly=True).runs()
    assert [r["status"] for r in runs] == ["done", "done"]
    for run in runs:
        environment = run["environment"]
        assert environment["job"] == "4242" and environment["host"] in ("node0", "node1")
        assert environment["array_index"] == environment["host"][-1]
    assert (tmp_path / "out" / "leaderboard.md").exists()  # task 0, after the suite
    assert len(Store(url, readonly=True).speed_rows()) == 2


def test_submitit_local_jobs_train_the_suite_once(tmp_path, postgres_server, capsys):
    url = postgres_server.create_database("submitit_local")
    out = tmp_path / "out"
    assert main(["run", "--suite", tiny_suite(tmp_path), "--store", url, "--out", str(out),
                 "--launcher", "submitit", "--workers", "2", "--cluster", "local",
                 "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "submitted 2 local job(s)" in said and "runs: 2 trained" in said
    runs = Store(url, readonly=True).runs()
    assert [r["status"] for r in runs] == ["done", "done"]
    indexes = {r["environment"]["array_index"] for r in runs}
    assert indexes <= {"0", "1"} and all(r["environment"].get("job") for r in runs)
    assert (out / "leaderboard.md").exists()
    logs = list((out / "submitit").rglob("*_log.out"))
    assert logs and any("[worker" in p.read_text() for p in logs)


def test_cluster_launches_refuse_what_cannot_work(tmp_path, capsys):
    suite = tiny_suite(tmp_path)
    assert main(["run", "--suite", suite, "--launcher", "submitit", "--cluster", "slurm",
                 "--store", str(tmp_path / "a.sqlite")]) == 2
    assert "need a store they can all reach" in capsys.readouterr().err
    assert main(["run", "--suite", suite, "--launcher", "submitit", "--jobs", "2"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["store", "copy", str(tmp_path / "a.sqlite")]) == 2
    assert "two stores" in capsys.readouterr().err


def test_a_taken_over_run_says_it_restarted_when_its_checkpoint_is_not_here(tmp_path,
                                                                           store_at):
    from attnarena.arena.run.runner import note_takeover

    store = Store(store_at)
    resolved = RunConfig(task="copy", mixer="gla").resolve()
    store.claim_run("r", resolved, None, {"host": "a"}, "far-away:7:x")
    claim, previous = store.claim_run("r", resolved, None, {"host": "b"}, "here:1:y",
                                      stale_after=0.0)
    assert claim == "claimed" and previous["owner"] == "far-away:7:x"
    note_takeover(store, "r", "here:1:y", previous, tmp_path / "checkpoints" / "r")
    takeover = store.run("r")["environment"]["takeover"]
    assert takeover["from"] == "far-away:7:x" and takeover["how"].startswith("restarted")
    assert store.run("r")["environment"]["host"] == "b"
    assert json.dumps(takeover)  # plain data
