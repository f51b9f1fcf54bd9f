"""The results store: one SQLite file, every write a transaction.

Tables: ``runs`` (one row per training run, keyed by its config's id) and ``speed`` (one
row per speed case, keyed by its settings and environment). A crash mid-write leaves the
previous committed state; finished runs are never lost.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    suite TEXT,
    task TEXT NOT NULL,
    mixer TEXT NOT NULL,
    preset TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    error TEXT,
    metrics TEXT,
    params INTEGER,
    peak_mem_mb REAL,
    train_seconds REAL,
    tokens_per_s REAL,
    environment TEXT,
    started REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS speed (
    id TEXT PRIMARY KEY,
    suite TEXT,
    mixer TEXT NOT NULL,
    length INTEGER NOT NULL,
    pass TEXT NOT NULL,
    status TEXT NOT NULL,
    row TEXT NOT NULL,
    environment TEXT,
    created REAL
);
"""


class StoreError(ValueError):
    """The store cannot be opened or written."""


class Store:
    def __init__(self, path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30)
            with self.db:
                self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the results store at {self.path}: {error}") from None
        self.db.row_factory = sqlite3.Row

    def close(self):
        self.db.close()

    def _write(self, sql, args):
        try:
            with self.db:
                self.db.execute(sql, args)
        except sqlite3.Error as error:
            raise StoreError(f"cannot write the results store at {self.path}: {error}") from None

    # -- runs ---------------------------------------------------------------------------------

    def run(self, run_id):
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _decode(dict(row))

    def start_run(self, run_id, resolved, suite, environment):
        self._write(
            "INSERT INTO runs (id, suite, task, mixer, preset, seed, config, status, "
            "environment, started) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'running', error = NULL, suite = "
            "excluded.suite, environment = excluded.environment, started = excluded.started",
            (run_id, suite, resolved["task"], resolved["mixer"], resolved["preset"],
             resolved["seed"], json.dumps(resolved, sort_keys=True), json.dumps(environment),
             time.time()))

    def finish_run(self, run_id, metrics):
        self._write(
            "UPDATE runs SET status = 'done', metrics = ?, params = ?, peak_mem_mb = ?, "
            "train_seconds = ?, tokens_per_s = ?, finished = ? WHERE id = ?",
            (json.dumps(metrics), metrics.get("params"), metrics.get("peak_mem_mb"),
             metrics.get("train_seconds"), metrics.get("tokens_per_s"), time.time(), run_id))

    def fail_run(self, run_id, error):
        self._write("UPDATE runs SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                    (error, time.time(), run_id))

    def runs(self, status=None):
        sql, args = "SELECT * FROM runs", ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        return [_decode(dict(r)) for r in self.db.execute(sql + " ORDER BY task, mixer", args)]

    # -- speed --------------------------------------------------------------------------------

    def speed_row(self, case_id):
        """The stored row of a speed case, or None."""
        found = self.db.execute("SELECT row FROM speed WHERE id = ?", (case_id,)).fetchone()
        return None if found is None else json.loads(found[0])

    def add_speed(self, case_id, row, suite, environment):
        self._write(
            "INSERT OR REPLACE INTO speed (id, suite, mixer, length, pass, status, row, "
            "environment, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (case_id, suite, row["mixer"], row["length"], row["pass"], row["status"],
             json.dumps(row), json.dumps(environment), time.time()))

    def speed_rows(self):
        rows = []
        for r in self.db.execute("SELECT * FROM speed ORDER BY mixer, pass, length"):
            row = json.loads(r["row"])
            row["environment"] = json.loads(r["environment"] or "{}")
            rows.append(row)
        return rows


def _decode(row):
    for key in ("config", "metrics", "environment"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row
