"""The store in one SQLite file: the embedded default.

Every write is a transaction; a claim takes the file's write lock (``BEGIN IMMEDIATE``), so
processes of one machine can share the file. An older layout is migrated by a writing open,
after the file is backed up beside itself; a reading open never changes the file.
"""
from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

from attnarena.arena.store.errors import StoreError
from attnarena.arena.store.schema import (RUNS_TABLE, SCHEMA, SCHEMA_VERSION, columns,
                                          needs_migration, statements)


class SQLiteDatabase:
    """One SQLite file behind the store's small interface (``query``, ``execute``,
    ``atomic``); statements use ``?`` placeholders."""

    kind = "sqlite"

    def __init__(self, path, readonly: bool):
        self.path = Path(path)
        self.location = self.label = str(path)
        try:
            if self.path.is_dir():
                raise StoreError(f"the results store {self.path} is a directory; name a file")
            if self.path.exists() and self.path.stat().st_size == 0:
                raise StoreError(f"the results store {self.path} is an empty file, not a "
                                 "store; delete it or name another file")
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"no results store at {self.path}; "
                                     "run `attnarena run` first")
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                          timeout=30)
                self._check_readable()
            else:
                if not self.path.exists():
                    _create(self.path)
                self.db = sqlite3.connect(self.path, timeout=30)
                self.db.execute("PRAGMA busy_timeout = 30000")
                self._migrate()
        except StoreError:
            raise
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the results store at {self.path}: {error}") from None
        self.db.row_factory = sqlite3.Row

    # -- the interface ------------------------------------------------------------------------

    def query(self, sql: str, args=()) -> list[dict]:
        try:
            return [dict(r) for r in self.db.execute(sql, args)]
        except sqlite3.Error as error:
            raise StoreError(f"cannot read the results store at {self.path}: {error}") from None

    def execute(self, sql: str, args=()) -> int:
        """Run one writing statement in a transaction of its own; returns the rows it changed."""
        try:
            with self.db:
                return self.db.execute(sql, args).rowcount
        except sqlite3.Error as error:
            raise StoreError(f"cannot write the results store at {self.path}: {error}") from None

    def atomic(self, body, lock: str | None = None):
        """``body(db)`` in one transaction holding the file's write lock (``lock`` names what
        is claimed; one file has one lock); its ``query`` and ``execute`` join it."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"cannot write the results store at {self.path}: {error}") from None
        inside = _Inside(self.db)
        try:
            result = body(inside)
            self.db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError(f"cannot write the results store at {self.path}: {error}") from None
        except BaseException:
            self._rollback()
            raise
        return result

    def heartbeat(self, sql: str, args) -> int | None:
        """A lease renewal: None when the file is busy (the next beat tries again)."""
        try:
            with self.db:
                return self.db.execute(sql, args).rowcount
        except sqlite3.Error:
            return None

    def close(self):
        self.db.close()

    # -- layout and migration -----------------------------------------------------------------

    def _layout(self) -> tuple[int, dict]:
        """(the file's schema version, {table name: its CREATE statement})."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = dict(self.db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        return version, tables

    def tables(self) -> list[str]:
        return sorted(self._layout()[1])

    def _check_readable(self):
        version, tables = self._layout()
        if version > SCHEMA_VERSION:
            raise StoreError(f"the results store {self.path} was written by a newer attnarena "
                             f"(schema {version}, this one reads up to {SCHEMA_VERSION}); "
                             "upgrade attnarena to read it")
        if needs_migration(version, tables):
            raise StoreError(f"the results store {self.path} has an older layout (schema "
                             f"{version}); `attnarena store migrate --store {self.path}` "
                             "brings it up to date, keeping a backup of the file")

    def _migrate(self):
        """Bring the file to ``SCHEMA_VERSION`` in one transaction, keeping every row, column
        and table, known or not. Before a table is rebuilt the file is backed up beside itself
        (``NAME.schema-N.bak``). Versions: 0 = unversioned (made before leases, or current
        but unstamped), 2 = runs with leases and the diverged / interrupted statuses."""
        version, tables = self._layout()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(f"the results store {self.path} was written by a newer attnarena "
                             f"(schema {version}, this one writes {SCHEMA_VERSION}); upgrade "
                             "attnarena to write to it")
        if needs_migration(version, tables) and "runs" in tables:
            self._backup(version)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version, tables = self._layout()  # another process may have migrated meanwhile
            if version < SCHEMA_VERSION:
                if needs_migration(version, tables) and "runs" in tables:
                    self._rebuild_runs()
                for statement in statements(SCHEMA):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _backup(self, version):
        """A consistent copy of the whole file (SQLite's backup API, taken outside any
        transaction of this connection), never overwritten."""
        target = self.path.with_name(f"{self.path.name}.schema-{version}.bak")
        if not target.exists():
            copy = sqlite3.connect(target)
            try:
                self.db.backup(copy)
            finally:
                copy.close()

    def _rebuild_runs(self):
        """``runs`` rebuilt with today's constraints; columns it does not know are kept."""
        known = columns(RUNS_TABLE)
        old = [r[1] for r in self.db.execute("PRAGMA table_info(runs)")]
        self.db.execute("ALTER TABLE runs RENAME TO runs_before_migration")
        self.db.execute(RUNS_TABLE)
        for column in old:
            if column not in known:
                self.db.execute(f'ALTER TABLE runs ADD COLUMN "{column}"')
        names = ", ".join(f'"{c}"' for c in old)
        self.db.execute(f"INSERT INTO runs ({names}) SELECT {names} FROM runs_before_migration")
        self.db.execute("DROP TABLE runs_before_migration")

    def _rollback(self):
        # SQLite rolls a transaction back by itself on some errors (a full disk, I/O
        # errors); a second ROLLBACK would then hide the real cause.
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")


class _Inside:
    """The statements of one open SQLite transaction."""

    def __init__(self, db):
        self.db = db

    def query(self, sql, args=()):
        return [dict(r) for r in self.db.execute(sql, args)]

    def execute(self, sql, args=()):
        return self.db.execute(sql, args).rowcount


def _create(path: Path) -> None:
    """Create a new store whole: written under a private name, then linked into place, so
    another process never finds a half-made (empty) file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        db = sqlite3.connect(tmp)
        with db:
            db.executescript(SCHEMA)
        db.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
