"""The results store: versioned migrations that keep every row, column and table; reports
that never write; errors that name their real cause."""
import json
import os
import socket
import sqlite3
import subprocess
import sys

import pytest

from attnarena.arena.run.config import RunConfig
from attnarena.arena.store import SCHEMA_VERSION, Store, StoreError
from attnarena.cli import main
from conftest import tiny_suite

OLD_RUNS = """CREATE TABLE runs (id TEXT PRIMARY KEY, suite TEXT, task TEXT NOT NULL,
    mixer TEXT NOT NULL, preset TEXT NOT NULL, seed INTEGER NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')), error TEXT,
    metrics TEXT, params INTEGER, peak_mem_mb REAL, train_seconds REAL, tokens_per_s REAL,
    environment TEXT, started REAL, finished REAL, notes TEXT);"""


def _old_store(path):
    """A store from before leases, with a column (notes) and a table (mine) of the user's."""
    config = json.dumps(RunConfig(task="copy", mixer="gla").resolve().as_dict())
    metrics = json.dumps({"metric": "accuracy", "test_accuracy": 0.5, "best_val_accuracy": 0.5,
                          "history": [], "params": 10, "tokens_per_s": 100.0,
                          "peak_mem_mb": 1.0, "steps": 2, "train_seconds": 0.1})
    with sqlite3.connect(path) as db:
        db.executescript(OLD_RUNS + "CREATE TABLE mine (x INTEGER); INSERT INTO mine VALUES (7);")
        db.execute("INSERT INTO runs (id, task, mixer, preset, seed, config, status, metrics, "
                   "notes) VALUES ('a', 'copy', 'gla', 'cpu', 0, ?, 'done', ?, 'keep me')",
                   (config, metrics))
    return path


def _dump(path):
    with sqlite3.connect(path) as db:
        return {t: sorted(map(tuple, db.execute(f"SELECT * FROM {t}")))
                for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_report_reads_without_writing_and_says_which_command_migrates(tmp_path, capsys):
    store = _old_store(tmp_path / "old.sqlite")
    before = store.read_bytes()
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "attnarena store migrate" in err and "older layout" in err
    assert store.read_bytes() == before  # nothing lost, nothing changed


def test_migration_keeps_unknown_columns_and_tables_and_backs_the_file_up(tmp_path, capsys):
    store = _old_store(tmp_path / "old.sqlite")
    before = _dump(store)
    assert main(["store", "migrate", "--store", str(store)]) == 0
    backup = tmp_path / "old.sqlite.schema-0.bak"
    assert _dump(backup) == before  # the backup is the file as it was
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT notes FROM runs WHERE id = 'a'").fetchone() == ("keep me",)
        assert db.execute("SELECT x FROM mine").fetchall() == [(7,)]
    db = Store(store, readonly=True)  # now a report can read it
    assert db.run("a")["metrics"]["test_accuracy"] == 0.5
    # the new statuses are accepted after the migration
    writer = Store(store)
    resolved = RunConfig(task="copy", mixer="gla").resolve()
    assert writer.claim_run("b", resolved, None, {}, "me:1:x")[0] == "claimed"
    assert writer.fail_run("b", "stop", "me:1:x", status="interrupted")
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r")]) == 0
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT notes FROM runs WHERE id = 'a'").fetchone() == ("keep me",)


def test_a_current_unversioned_store_is_read_as_is_and_stamped_only_by_a_writer(tmp_path):
    path = tmp_path / "a.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 0")  # as every store made before versions
    Store(path, readonly=True).runs()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert not list(tmp_path.glob("*.bak"))  # nothing rebuilt, nothing to back up


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "a.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for readonly in (True, False):
        with pytest.raises(StoreError, match="newer attnarena"):
            Store(path, readonly=readonly)


def test_a_report_of_a_missing_store_is_one_line(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "no results store" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()


def test_a_full_disk_under_a_claim_names_the_real_cause(tmp_path):
    store = Store(tmp_path / "a.sqlite")
    resolved = RunConfig(task="copy", mixer="gla").resolve()
    # a page budget the claim's write cannot fit in: SQLite reports the database full and
    # rolls the transaction back itself
    pages = store.database.db.execute("PRAGMA page_count").fetchone()[0]
    store.database.db.execute(f"PRAGMA max_page_count = {pages}")
    big = {**resolved, "filler": "x" * 200_000}
    with pytest.raises(StoreError) as caught:
        store.claim_run("a", big, None, {}, "me:1:x")
    assert "full" in str(caught.value) and str(tmp_path / "a.sqlite") in str(caught.value)
    assert "no transaction" not in str(caught.value)


def test_report_output_writes_the_markdown_leaderboard_there(tmp_path, capsys):
    store = _old_store(tmp_path / "a.sqlite")
    Store(store).close()  # migrated
    target = tmp_path / "board.md"
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "r"),
                 "--output", str(target)]) == 0
    assert target.read_text() == (tmp_path / "r" / "leaderboard.md").read_text()
    assert "# attnarena leaderboard" not in capsys.readouterr().out  # not printed as well


def _resolved():
    return RunConfig(task="copy", mixer="gla").resolve()


def test_leases_keep_live_owners_and_take_over_dead_ones(store_at):
    store = Store(store_at)
    resolved = _resolved()
    host = socket.gethostname()
    alive = f"{host}:{os.getpid()}:aaaa"
    assert store.claim_run("r", resolved, None, {}, alive)[0] == "claimed"
    assert store.claim_run("r", resolved, None, {}, "other:1:bbbb")[0] == "busy"
    # the holder finishes; nobody else can overwrite the finished run
    assert not store.finish_run("r", {"params": 1}, "other:1:bbbb")
    assert store.finish_run("r", {"params": 1}, alive)
    assert store.claim_run("r", resolved, None, {}, "other:1:bbbb")[0] == "finished"
    assert not store.fail_run("r", "late", "other:1:bbbb")
    assert store.run("r")["status"] == "done" and store.run("r")["error"] is None
    # a process of this host that no longer runs: taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert store.claim_run("s", resolved, None, {}, f"{host}:{dead.pid}:cccc")[0] == "claimed"
    assert store.claim_run("s", resolved, None, {}, alive)[0] == "claimed"
    # another host: busy while its heartbeat is fresh, taken over once it is stale
    assert store.claim_run("t", resolved, None, {}, "far-away:7:dddd")[0] == "claimed"
    assert store.claim_run("t", resolved, None, {}, alive)[0] == "busy"
    assert store.claim_run("t", resolved, None, {}, alive, stale_after=0.0)[0] == "claimed"
    assert store.heartbeat("t", alive) and not store.heartbeat("t", "far-away:7:dddd")


def test_old_stores_are_migrated_and_empty_files_refused(tmp_path):
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:
        db.executescript("""CREATE TABLE runs (id TEXT PRIMARY KEY, suite TEXT, task TEXT NOT
            NULL, mixer TEXT NOT NULL, preset TEXT NOT NULL, seed INTEGER NOT NULL, config TEXT
            NOT NULL, status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
            error TEXT, metrics TEXT, params INTEGER, peak_mem_mb REAL, train_seconds REAL,
            tokens_per_s REAL, environment TEXT, started REAL, finished REAL);""")
        db.execute("INSERT INTO runs (id, task, mixer, preset, seed, config, status) VALUES "
                   "('a', 'copy', 'gla', 'cpu', 0, '{}', 'running')")
    store = Store(old)
    assert store.run("a")["status"] == "running"
    assert store.claim_run("a", _resolved(), None, {}, "me:1:x")[0] == "claimed"  # no owner
    assert store.fail_run("a", "nan", "me:1:x", status="diverged")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="empty file"):
        Store(empty)


def test_store_is_transactional_and_keeps_runs(store_at):
    store = Store(store_at)
    resolved = RunConfig(task="copy", mixer="gla").resolve()
    store.claim_run("a", resolved, "x", {"torch": "t"}, "t")
    assert store.run("a")["status"] == "running"
    store.finish_run("a", {"test_accuracy": 0.5, "params": 3}, "t")
    store.claim_run("b", resolved, "x", {}, "t")
    store.fail_run("b", "boom", "t")
    assert sorted(r["status"] for r in store.runs()) == ["done", "failed"]
    store.close()
    again = Store(store_at)
    assert again.run("a")["metrics"]["test_accuracy"] == 0.5
    # a claim that fails half-way leaves nothing behind
    with pytest.raises(TypeError):
        again.claim_run("c", {**resolved, "task": object()}, "x", {}, "t")
    assert again.run("c") is None and len(again.runs()) == 2


def test_unwritable_store_is_one_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the results store"):
        Store(blocker / "arena.sqlite")
    assert main(["run", "--suite", tiny_suite(tmp_path), "--store",
                 str(blocker / "arena.sqlite"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open the results store" in err[0]
