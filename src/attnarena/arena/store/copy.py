"""Copying every row of one store into another (a laptop's SQLite file into the team's
PostgreSQL database, and back).

A copy is idempotent, and never replaces better with worse: a row the target lacks is
added; a row it has is replaced only when the source's is further along (a run finished
in the source but still running, interrupted or failed in the target) or newer (the later
of two finished runs, or of two measurements of one speed case). Copying twice changes
nothing the second time. Columns a store does not know (an SQLite file's own additions) stay
behind.
"""
from __future__ import annotations

from attnarena.arena.store.schema import TABLES, table_columns

_FINISHED = ("done", "diverged")


def _rank(table: str, row: dict) -> tuple:
    """How far along and how recent a row is: the larger one wins."""
    if table == "runs":
        return (row["status"] in _FINISHED, row["status"] != "running",
                row["finished"] or 0.0)
    return (row["created"] or 0.0,)


def copy_rows(source, target) -> dict:
    """Copy every row of the store ``source`` into ``target`` (two ``Store`` objects); the
    target's writes are one transaction. Returns {table: {"added": n, "replaced": n,
    "kept": n}} (kept: the target's row was as far along, or further)."""
    counts = {}
    plan = []
    for table in TABLES:
        names = table_columns()[table]
        wanted = ", ".join(f'"{n}"' for n in names)
        theirs = {r["id"]: r for r in target.database.query(f"SELECT {wanted} FROM {table}")}
        added = replaced = kept = 0
        for row in source.database.query(f"SELECT {wanted} FROM {table}"):
            old = theirs.get(row["id"])
            if old is None:
                added += 1
            elif _rank(table, row) > _rank(table, old):
                replaced += 1
            else:
                kept += 1
                continue
            plan.append((table, names, row))
        counts[table] = {"added": added, "replaced": replaced, "kept": kept}

    def write(db):
        for table, names, row in plan:
            quoted = [f'"{n}"' for n in names]
            db.execute(f"INSERT INTO {table} ({', '.join(quoted)}) VALUES "
                       f"({', '.join('?' for _ in names)}) ON CONFLICT(id) DO UPDATE SET "
                       + ", ".join(f"{n} = excluded.{n}" for n in quoted[1:]),
                       tuple(row[n] for n in names))

    if plan:
        target.database.atomic(write, lock="store copy")
    return counts
