"""The store's tables, written once for both databases.

The statements are SQLite's; ``postgres_schema`` turns them into PostgreSQL's (its REAL is a
4-byte float, too coarse for timestamps, so REAL columns become DOUBLE PRECISION there).
"""
from __future__ import annotations

import re

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    suite TEXT,
    task TEXT NOT NULL,
    mixer TEXT NOT NULL,
    preset TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'diverged',
                                           'interrupted')),
    error TEXT,
    metrics TEXT,
    params INTEGER,
    peak_mem_mb REAL,
    train_seconds REAL,
    tokens_per_s REAL,
    environment TEXT,
    started REAL,
    finished REAL,
    owner TEXT,
    heartbeat REAL
);
"""
SCHEMA = RUNS_TABLE + """
CREATE TABLE IF NOT EXISTS speed (
    id TEXT PRIMARY KEY,
    suite TEXT,
    mixer TEXT NOT NULL,
    length INTEGER NOT NULL,
    pass TEXT NOT NULL,
    status TEXT NOT NULL,
    "row" TEXT NOT NULL,
    environment TEXT,
    created REAL
);
CREATE TABLE IF NOT EXISTS linearize (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    mixer TEXT NOT NULL,
    stage TEXT NOT NULL,
    "row" TEXT NOT NULL,
    environment TEXT,
    created REAL
);
CREATE TABLE IF NOT EXISTS compress (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    recipe TEXT NOT NULL,
    "row" TEXT NOT NULL,
    environment TEXT,
    created REAL
);
"""
SCHEMA_VERSION = 2  # SQLite: the file's PRAGMA user_version; PostgreSQL: attnarena_meta

TABLES = ("runs", "speed", "linearize", "compress")

# The row tables: the columns indexed from each row (beside its JSON) and the listing order.
ROW_TABLES = {
    "speed": (("mixer", "length", "pass", "status"), "mixer, pass, length"),
    "linearize": (("source", "mixer", "stage"), "source, created"),
    "compress": (("source", "recipe"), "source, created"),
}


def statements(schema: str = SCHEMA) -> list[str]:
    return [s.strip() for s in schema.split(";") if s.strip()]


def postgres_schema() -> str:
    """``SCHEMA`` in PostgreSQL's types (8-byte integers and floats)."""
    text = re.sub(r"\bREAL\b", "DOUBLE PRECISION", SCHEMA)
    return re.sub(r"\bINTEGER\b", "BIGINT", text)


def row_table(table: str) -> tuple:
    if table not in ROW_TABLES:
        raise ValueError(f"unknown row table {table!r}; the store has: {', '.join(ROW_TABLES)}")
    return ROW_TABLES[table]


def columns(create_sql: str) -> list[str]:
    """Column names of a CREATE TABLE statement of ours (one column per line)."""
    body = create_sql[create_sql.index("(") + 1:]
    names = [line.split()[0].strip('"') for line in body.splitlines() if line.strip()]
    return [n for n in names if n[0].isalpha() and n.islower()]


def table_columns() -> dict[str, list[str]]:
    """{table: its column names}, for every table of ``SCHEMA``."""
    return {statement.split("(")[0].split()[-1]: columns(statement)
            for statement in statements(SCHEMA)}


def needs_migration(version: int, tables: dict) -> bool:
    """Whether an SQLite store of ``version`` with these tables must change before use."""
    if version >= SCHEMA_VERSION:
        return False
    missing = set(TABLES) - set(tables)
    return bool(missing) or "interrupted" not in tables.get("runs", "")
