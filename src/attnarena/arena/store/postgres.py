"""The store in a PostgreSQL database (``postgresql://user:password@host:port/dbname``), for
suites spread over several machines.

The tables are the SQLite store's (``schema.py``); the schema version lives in
``attnarena_meta``. A claim is one transaction holding a transaction-scoped advisory lock on
the run's id (``pg_advisory_xact_lock``), PostgreSQL's equivalent of SQLite's whole-file
write lock, narrowed to one run. A server that goes away after the store was opened
(restarted, a network cut) is waited for: each operation reconnects with backoff for up to
``ATTNARENA_STORE_PATIENCE`` seconds (default 600) before it fails, so a run that finished
meanwhile is written when the server returns. A password is never shown: messages name the
URL with it replaced by ``***``.
"""
from __future__ import annotations

import os
import re
import sys
import time

from attnarena.arena.store.errors import StoreError
from attnarena.arena.store.schema import SCHEMA_VERSION, postgres_schema, statements
from attnarena.extras import require

URL_PREFIXES = ("postgresql://", "postgres://")
SCHEMA_LOCK = 0x617474_6E61  # the advisory lock held while the tables are made
MAX_BACKOFF_SECONDS = 10.0


def is_postgres_url(location) -> bool:
    return isinstance(location, str) and location.startswith(URL_PREFIXES)


def hide_password(url: str) -> str:
    """The URL with its password, if any, replaced by ``***``."""
    return re.sub(r"^(\w+://[^:/@]*):[^@]*@", r"\1:***@", url)


def patience_seconds() -> float:
    value = os.environ.get("ATTNARENA_STORE_PATIENCE", "600")
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"ATTNARENA_STORE_PATIENCE must be a number of seconds, got {value!r}"
                         ) from None


class PostgresDatabase:
    """One PostgreSQL database behind the store's small interface (``query``, ``execute``,
    ``atomic``); statements use ``?`` placeholders, turned into psycopg's ``%s``."""

    kind = "postgresql"

    def __init__(self, url: str, readonly: bool):
        self.psycopg = require("psycopg", "PostgreSQL stores", "postgres")
        from psycopg.rows import dict_row

        self._row_factory = dict_row
        self.location, self.label, self.readonly = url, hide_password(url), readonly
        self.patience = patience_seconds()
        self.conn = self._connect(opening=True)
        try:
            if readonly:
                self._check_readable()
            else:
                self._prepare()
        except self.psycopg.Error as error:
            raise StoreError(f"cannot open the results store at {self.label}: "
                             f"{self._say(error)}") from None

    def _say(self, error) -> str:
        """psycopg's message as one line, with no password in it."""
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        text = " ".join(lines) or type(error).__name__
        password = self.psycopg.conninfo.conninfo_to_dict(self.location).get("password")
        return text.replace(password, "***") if password else text

    def _connect(self, opening=False):
        try:
            conn = self.psycopg.connect(self.location, autocommit=True,
                                        row_factory=self._row_factory, connect_timeout=10)
        except self.psycopg.ProgrammingError as error:  # a malformed URL
            raise StoreError(f"not a PostgreSQL URL {self.label}: {self._say(error)} "
                             "(expected postgresql://user:password@host:port/database)"
                             ) from None
        except self.psycopg.OperationalError as error:
            if opening:  # a wrong password or an unreachable host: said at once
                raise StoreError(f"cannot open the results store at {self.label}: "
                                 f"{self._say(error)}") from None
            raise
        if self.readonly:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        return conn

    def _retry(self, operation, what="write"):
        """``operation(conn)``, reconnecting with backoff while the server is unreachable."""
        began, delay, said = None, 0.25, False
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                return operation(self.conn)
            except self.psycopg.OperationalError as error:
                began = began or time.monotonic()
                waited = time.monotonic() - began
                if waited >= self.patience:
                    raise StoreError(f"the results store at {self.label} has been unreachable "
                                     f"for {waited:.0f} s: {self._say(error)}") from None
                if not said:
                    print(f"the results store at {self.label} is unreachable "
                          f"({self._say(error)}); retrying for up to {self.patience:.0f} s",
                          file=sys.stderr, flush=True)
                    said = True
                self._drop()
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            except self.psycopg.Error as error:
                raise StoreError(f"cannot {what} the results store at {self.label}: "
                                 f"{self._say(error)}") from None

    def _drop(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except self.psycopg.Error:
                pass
        self.conn = None

    # -- the interface ------------------------------------------------------------------------

    def query(self, sql: str, args=()) -> list[dict]:
        sql = _placeholders(sql)
        return self._retry(lambda conn: conn.execute(sql, args).fetchall(), "read")

    def execute(self, sql: str, args=()) -> int:
        sql = _placeholders(sql)
        return self._retry(lambda conn: conn.execute(sql, args).rowcount)

    def atomic(self, body, lock: str | None = None):
        """``body(db)`` in one transaction holding the advisory lock of ``lock`` (retried
        whole if the connection is lost before it commits)."""
        def once(conn):
            with conn.transaction():
                if lock is not None:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                                 (lock,))
                return body(_Inside(conn))
        return self._retry(once)

    def heartbeat(self, sql: str, args) -> int | None:
        """A lease renewal, tried once: None when the server cannot be reached now."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self._connect()
            return self.conn.execute(_placeholders(sql), args).rowcount
        except self.psycopg.OperationalError:
            self._drop()
            return None

    def tables(self) -> list[str]:
        return sorted(r["table_name"] for r in self.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()"))

    def close(self):
        self._drop()

    # -- layout -------------------------------------------------------------------------------

    def _version(self, conn) -> int | None:
        found = conn.execute("SELECT to_regclass('attnarena_meta') AS t").fetchone()["t"]
        if found is None:
            return None
        row = conn.execute("SELECT value FROM attnarena_meta WHERE key = 'schema_version'"
                           ).fetchone()
        return None if row is None else int(row["value"])

    def _newer(self, version, verb):
        return StoreError(f"the results store at {self.label} was written by a newer "
                          f"attnarena (schema {version}, this one {verb} up to "
                          f"{SCHEMA_VERSION}); upgrade attnarena")

    def _check_readable(self):
        version = self._version(self.conn)
        if version is None:
            raise StoreError(f"no results store in the database at {self.label}; run "
                             "`attnarena run --store URL` first")
        if version > SCHEMA_VERSION:
            raise self._newer(version, "reads")

    def _prepare(self):
        """Make the tables once (under an advisory lock: processes may open at once)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            version = self._version(self.conn)
            if version is not None and version > SCHEMA_VERSION:
                raise self._newer(version, "writes")
            if version == SCHEMA_VERSION:
                return
            self.conn.execute("CREATE TABLE IF NOT EXISTS attnarena_meta "
                              "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for statement in statements(postgres_schema()):
                self.conn.execute(statement)
            self.conn.execute("INSERT INTO attnarena_meta (key, value) VALUES "
                              "('schema_version', %s) ON CONFLICT (key) DO UPDATE SET "
                              "value = excluded.value", (str(SCHEMA_VERSION),))


class _Inside:
    """The statements of one open PostgreSQL transaction."""

    def __init__(self, conn):
        self.conn = conn

    def query(self, sql, args=()):
        return self.conn.execute(_placeholders(sql), args).fetchall()

    def execute(self, sql, args=()):
        return self.conn.execute(_placeholders(sql), args).rowcount


def _placeholders(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (the store's SQL has no ``%``)."""
    return sql.replace("?", "%s")
