"""The results store: an SQLite file (the embedded default) or a PostgreSQL database (for a
suite spread over machines), every write a transaction.

Tables: ``runs`` (one row per training run, keyed by its config's id), ``speed`` (one
row per speed case, keyed by its settings and environment), ``linearize`` (one row per
stage of a linearization, keyed by its source model and recipe) and ``compress`` (one row
per compressed model, keyed by its source run, recipe and hardware). A crash mid-write leaves
the previous committed state; finished runs are never lost. Both databases sit behind one
small interface (``query``, ``execute``, ``atomic``: ``sqlite.py``, ``postgres.py``), so every
statement here is written once.

Several processes, on one machine or on many sharing a PostgreSQL server, can work through
one suite together: a process trains a run only after claiming it in one transaction (a
lease naming its host and pid, kept alive by a heartbeat). A lease whose process is gone
(its pid is dead on this host, or its heartbeat is older than the stale time) is taken
over, and the run resumes from its checkpoint when that is on storage this process sees.
Only the lease holder can finish a run, so a finished run is never overwritten by another
process.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid

from attnarena.arena.store.errors import StoreError
from attnarena.arena.store.postgres import PostgresDatabase, hide_password, is_postgres_url
from attnarena.arena.store.schema import ROW_TABLES, SCHEMA_VERSION, row_table
from attnarena.arena.store.sqlite import SQLiteDatabase

__all__ = ["FINAL", "ROW_TABLES", "SCHEMA_VERSION", "Lease", "Store", "StoreError",
           "host_name", "new_owner", "open_database", "row_key", "stable_id", "store_label"]

FINAL = ("done", "diverged")  # deterministic outcomes: reused unless asked to rerun
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 60.0
RESUMABLE = ("running", "interrupted")  # a claim of such a row takes a run over


def stable_id(value, length: int = 12, algorithm: str = "sha256") -> str:
    """The one id function of the store's keys: a hex digest of ``value`` as sorted JSON
    (anything JSON cannot hold written as its ``str``), cut to ``length``. Runs, speed
    cases and the rows of compression and linearization are all keyed by it (compression
    and linearization rows by its sha1 form, the one their stores were first written
    with)."""
    text = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.new(algorithm, text).hexdigest()[:length]


def row_key(*parts) -> str:
    """The key of a compression or linearization row from what tells it apart."""
    return stable_id(parts, 12, "sha1")


def host_name() -> str:
    """This machine's name as leases and environments record it: ``ATTNARENA_HOST`` when
    set (a cluster's node name, or distinct names for workers of one machine), else the
    host name."""
    return os.environ.get("ATTNARENA_HOST") or socket.gethostname()


def new_owner() -> str:
    """This process's lease name: host, pid and a random tag (pids are reused)."""
    return f"{host_name()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str | None) -> bool | None:
    """False when ``owner`` is a process of this host that no longer runs; None when that
    cannot be told here (another host)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    if host != host_name():
        return None
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def open_database(location, readonly: bool = False):
    """The database at ``location``: a ``postgresql://`` URL, else an SQLite file path."""
    if is_postgres_url(location):
        return PostgresDatabase(location, readonly)
    return SQLiteDatabase(location, readonly)


def store_label(location) -> str:
    """``location`` as messages show it (a URL's password hidden)."""
    return hide_password(location) if is_postgres_url(location) else str(location)


class Store:
    """The results store at ``location``: an SQLite file (created when missing) or a
    PostgreSQL database named by its URL (its tables created when missing).

    ``readonly=True`` (reports) opens it without writing to it: never creating, migrating
    or stamping it; an SQLite store of an older layout is refused with the command that
    migrates it. A writing open brings an older SQLite layout up to ``SCHEMA_VERSION`` first.
    """

    def __init__(self, location, *, readonly=False):
        self.readonly = readonly
        self.database = open_database(location, readonly)
        self.location, self.label = self.database.location, self.database.label

    @property
    def path(self):
        """The SQLite file (a ``Path``); None for a PostgreSQL store."""
        return getattr(self.database, "path", None)

    @property
    def kind(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.database.kind

    def close(self):
        self.database.close()

    def _query(self, sql, args=()) -> list[dict]:
        return self.database.query(sql, args)

    # -- runs ---------------------------------------------------------------------------------

    def run(self, run_id):
        found = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _decode(found[0]) if found else None

    def claim_run(self, run_id, resolved, suite, environment, owner, *, retake_before=None,
                  retry_failed_before=None, stale_after=None):
        """Take the lease of a run in one transaction.

        Returns ("claimed", previous) when this owner may train it now (``previous``: the
        row it takes over, running or interrupted, else None), ("finished", row) when it is
        done, diverged or failed and not to be retaken, or ("busy", row) while another live
        process holds it. ``retake_before``: done and diverged runs finished before this
        time are trained again (``--rerun``). ``retry_failed_before``: failed runs finished
        before this time are tried again (a failure that another process records while
        this one runs is left alone). Interrupted runs and stale leases (no heartbeat for
        ``stale_after`` seconds, default ``ATTNARENA_STALE_SECONDS`` or 60) are taken over.
        """
        stale_after = stale_seconds() if stale_after is None else stale_after

        def claim(db):
            now = time.time()
            found = db.query("SELECT * FROM runs WHERE id = ?", (run_id,))
            row = found[0] if found else None
            if row is not None:
                status, finished = row["status"], row["finished"] or 0.0
                if status in FINAL and not (retake_before and finished < retake_before):
                    return "finished", _decode(row)
                if status == "failed" and not (retry_failed_before
                                               and finished < retry_failed_before):
                    return "finished", _decode(row)
                if status == "running" and row["owner"] != owner:
                    # a live owner renews its lease every few seconds: a dead pid on this
                    # host, or a stale heartbeat (a stuck process, a reused pid, another
                    # host gone), means the run is free to take over
                    fresh = now - (row["heartbeat"] or 0.0) < stale_after
                    if fresh and _owner_alive(row["owner"]) is not False:
                        return "busy", _decode(row)
            db.execute(
                "INSERT INTO runs (id, suite, task, mixer, preset, seed, config, status, "
                "environment, started, owner, heartbeat) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status = 'running', error = NULL, "
                "suite = excluded.suite, environment = excluded.environment, "
                "started = excluded.started, owner = excluded.owner, "
                "heartbeat = excluded.heartbeat, finished = NULL",
                (run_id, suite, resolved["task"], resolved["mixer"], resolved["preset"],
                 resolved["seed"], json.dumps(dict(resolved), sort_keys=True),
                 json.dumps(environment), now, owner, now))
            taken = row is not None and row["status"] in RESUMABLE and row["owner"] != owner
            return "claimed", _decode(row) if taken else None

        return self.database.atomic(claim, lock=run_id)

    def note_run(self, run_id, owner, **notes) -> bool:
        """Add ``notes`` to the environment of a run ``owner`` holds (how it was taken over,
        say); False when the lease was lost."""
        def note(db):
            found = db.query("SELECT environment FROM runs WHERE id = ? AND owner = ? "
                             "AND status = 'running'", (run_id, owner))
            if not found:
                return False
            env = {**json.loads(found[0]["environment"] or "{}"), **notes}
            db.execute("UPDATE runs SET environment = ? WHERE id = ?",
                       (json.dumps(env), run_id))
            return True
        return self.database.atomic(note, lock=run_id)

    def _settle(self, run_id, owner, status, **values) -> bool:
        """Set a run held by ``owner`` to ``status``; False when the lease was lost."""
        columns = ", ".join(f"{k} = ?" for k in values)
        changed = self.database.execute(
            f"UPDATE runs SET status = ?, finished = ?, {columns} "
            "WHERE id = ? AND owner = ? AND status = 'running'",
            (status, time.time(), *values.values(), run_id, owner))
        if changed == 1:
            return True
        # a write retried after a lost connection may find its own first attempt committed
        row = self.run(run_id)
        return row is not None and row["owner"] == owner and row["status"] == status

    def finish_run(self, run_id, metrics, owner) -> bool:
        return self._settle(run_id, owner, "done", error=None, metrics=json.dumps(metrics),
                            params=metrics.get("params"),
                            peak_mem_mb=metrics.get("peak_mem_mb"),
                            train_seconds=metrics.get("train_seconds"),
                            tokens_per_s=metrics.get("tokens_per_s"))

    def fail_run(self, run_id, error, owner, status="failed") -> bool:
        """Record a failure, a divergence (``status="diverged"``) or an interruption."""
        if status not in ("failed", "diverged", "interrupted"):  # 'done' is finish_run's
            raise ValueError(f"not a failure status: {status!r}")
        return self._settle(run_id, owner, status, error=error)

    def heartbeat(self, run_id, owner) -> bool:
        """Renew a lease; False when another process has taken it over (a store that cannot
        be written just now counts as renewed: the next beat tries again)."""
        changed = self.database.heartbeat(
            "UPDATE runs SET heartbeat = ? WHERE id = ? AND owner = ? AND status = 'running'",
            (time.time(), run_id, owner))
        return changed is None or changed == 1

    def runs(self, status=None):
        sql, args = "SELECT * FROM runs", ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = [_decode(r) for r in self._query(sql, args)]
        # ordered here, not by the database: text collations differ between databases
        return sorted(rows, key=lambda r: (r["task"], r["mixer"], r["seed"], r["id"]))

    # -- row tables: speed, linearize, compress ----------------------------------------------

    def row(self, table: str, row_id):
        """The stored row ``row_id`` of a row table, or None."""
        row_table(table)
        found = self._query(f'SELECT "row" FROM {table} WHERE id = ?', (row_id,))
        return json.loads(found[0]["row"]) if found else None

    def put_row(self, table: str, row_id, row: dict, environment, **columns) -> None:
        """Write ``row`` as ``row_id`` of a row table (its indexed columns taken from the row,
        or given); a row written again keeps its place in the listing."""
        indexed, _ = row_table(table)
        values = {**{c: row[c] for c in indexed if c not in columns}, **columns,
                  "row": json.dumps(row), "environment": json.dumps(environment)}
        names = [f'"{n}"' for n in values]
        self.database.execute(
            f"INSERT INTO {table} (id, {', '.join(names)}, created) VALUES "
            f"(?, {', '.join('?' for _ in names)}, ?) ON CONFLICT(id) DO UPDATE SET "
            + ", ".join(f"{n} = excluded.{n}" for n in names),
            (row_id, *values.values(), time.time()))

    def row_items(self, table: str) -> list[tuple]:
        """(id, row) pairs of a row table in its listing order, each row with the
        environment it was measured in."""
        _, order = row_table(table)
        keys = [c.strip() for c in order.split(",")] + ["id"]
        items = []
        for r in sorted(self._query(f"SELECT * FROM {table}"),
                        key=lambda r: tuple(r[k] for k in keys)):
            row = json.loads(r["row"])
            row["environment"] = json.loads(r["environment"] or "{}")
            items.append((r["id"], row))
        return items

    def speed_row(self, case_id):
        return self.row("speed", case_id)

    def add_speed(self, case_id, row, suite, environment):
        self.put_row("speed", case_id, row, environment, suite=suite)

    def speed_rows(self):
        return [row for _, row in self.row_items("speed")]

    def linearize_row(self, row_id):
        return self.row("linearize", row_id)

    def add_linearize(self, row_id, row, environment):
        self.put_row("linearize", row_id, row, environment)

    def linearize_items(self):
        return self.row_items("linearize")

    def linearize_rows(self):
        return [row for _, row in self.row_items("linearize")]

    def compress_row(self, row_id):
        return self.row("compress", row_id)

    def add_compress(self, row_id, row, environment):
        self.put_row("compress", row_id, row, environment)

    def compress_rows(self):
        return [row for _, row in self.row_items("compress")]


def stale_seconds() -> float:
    """How long a lease's heartbeat may be silent before another process takes the run over:
    ``ATTNARENA_STALE_SECONDS`` when set, else ``STALE_SECONDS``."""
    value = os.environ.get("ATTNARENA_STALE_SECONDS")
    if value is None:
        return STALE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"ATTNARENA_STALE_SECONDS must be a positive number of seconds, "
                         f"got {value!r}")
    return seconds


class Lease:
    """Context manager that keeps a claimed run's lease alive from a thread of its own
    (with its own connection) every ``HEARTBEAT_SECONDS`` (a third of the stale time when
    that is shorter); ``lost`` turns True when another process took the run over."""

    def __init__(self, location, run_id, owner, interval=None):
        self.location, self.run_id, self.owner = location, run_id, owner
        self.interval = interval or min(HEARTBEAT_SECONDS, stale_seconds() / 3)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        store = None
        try:
            while not self._stop.wait(self.interval):
                try:
                    store = store or Store(self.location)
                except StoreError:
                    continue  # unreachable just now: the next beat tries again
                if not store.heartbeat(self.run_id, self.owner):
                    self.lost = True
                    return
        finally:
            if store is not None:
                store.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def _decode(row):
    for key in ("config", "metrics", "environment"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row
