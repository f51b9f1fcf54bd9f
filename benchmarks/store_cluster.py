"""A suite spread over workers of "many hosts", sharing one PostgreSQL store, under failure.

    python benchmarks/store_cluster.py [--workers 8] [--seeds 6] [--steps 300]

Starts a PostgreSQL server of its own (pgserver's binaries, or the system's), then:

1. **The suite under failure**: ``--workers`` processes of ``attnarena run --train-only``
   (each with its own host name, ``ATTNARENA_HOST=host-K``, one thread) work through a suite
   of 4 mechanisms x ``--seeds`` seeds on the copy task. Once a quarter of the runs are done
   two workers holding leases are killed with SIGKILL; once half are done the server is
   restarted (one killed worker's run had a checkpoint, where one did). The survivors
   finish the suite. Checked: every run ``done`` exactly once (the
   "run k of N ... test accuracy" lines of all workers), none lost, none failed, and each
   run's quality (test and best validation metric, its whole history) equal to the same
   suite trained by one process into an SQLite file.
2. **Claims**: ``--workers`` processes each claim 200 runs of their own as fast as they can,
   against the PostgreSQL store and against an SQLite file: claims per second for all of
   them together and the latency of one claim (median, 95th percentile).

Prints a Markdown report; ``--json PATH`` writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnarena.arena.run.checkpoint import newest_step
from attnarena.arena.store import Store
from attnarena.arena.store.local_server import LocalPostgres

SUITE = """name = "cluster"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "linear", "gla", "retention"]
seeds = [%(seeds)s]
train = { steps = %(steps)d, eval_every = 25, eval_examples = 64, batch = 8 }
model = { dim = 16, depth = 1, heads = 2 }
"""

CLAIMS = """
import json, sys, time
from attnarena.arena.run.config import RunConfig
from attnarena.arena.run.checkpoint import newest_step
from attnarena.arena.store import Store
store, owner, count = Store(sys.argv[1]), sys.argv[2], int(sys.argv[3])
resolved = RunConfig(task="copy", mixer="gla").resolve()
print("ready", flush=True)
sys.stdin.readline()
took = []
for k in range(count):
    began = time.perf_counter()
    assert store.claim_run(f"{owner}-{k}", resolved, None, {}, owner)[0] == "claimed"
    took.append(time.perf_counter() - began)
print(json.dumps(took))
"""


def _done(url) -> int:
    try:
        store = Store(url, readonly=True)
    except Exception:  # the server is restarting
        return -1
    try:
        return len(store.runs(status="done"))
    except Exception:
        return -1
    finally:
        store.close()


def suite_under_failure(server, folder: Path, workers: int, seeds: int, steps: int) -> dict:
    suite = folder / "cluster.toml"
    suite.write_text(SUITE % {"seeds": ", ".join(map(str, range(seeds))), "steps": steps})
    total = 4 * seeds
    url = server.create_database("cluster")
    out = folder / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATTNARENA_STALE_SECONDS": "6",
           "ATTNARENA_STORE_PATIENCE": "120"}
    began = time.time()
    procs = []
    for k in range(workers):
        log = open(folder / f"worker-{k}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "attnarena", "run", "--suite", str(suite), "--store", url,
             "--out", str(out), "--train-only", "--quiet"],
            env={**env, "ATTNARENA_HOST": f"host-{k}"}, stdout=log, stderr=subprocess.STDOUT),
            log))
    events = {}
    killed = []
    while any(p.poll() is None for p, _ in procs):
        done = _done(url)
        if "killed" not in events and done >= total // 4:
            store = Store(url, readonly=True)
            # one holder whose run has a checkpoint (to be resumed) and one whose run has
            # none yet (to be restarted), where there are such
            holders = sorted(((newest_step(out / "checkpoints" / r["id"]) is None,
                               int(r["owner"].split(":")[1]))
                              for r in store.runs(status="running")))
            store.close()
            chosen = [pid for _, pid in holders[:1] + holders[-1:]] if holders else []
            for p, _ in procs:
                if p.pid in chosen and len(killed) < 2:
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
            events["killed"] = {"at_done": done, "seconds": time.time() - began,
                                "workers": len(killed)}
        if "restarted" not in events and "killed" in events and done >= total // 2:
            stopped = time.time()
            server.restart()
            events["restarted"] = {"at_done": done, "seconds": stopped - began,
                                   "down_seconds": time.time() - stopped}
        time.sleep(0.2)
    wall = time.time() - began
    for _, log in procs:
        log.close()
    codes = [p.returncode for p, _ in procs]
    finished = {}
    for k in range(workers):
        for line in (folder / f"worker-{k}.log").read_text().splitlines():
            found = re.match(r"run \d+ of \d+: (\S+) / (\S+) seed (\d+): (\w+)", line)
            if found and found.group(4) == "test":
                key = found.group(2, 3)
                finished[key] = finished.get(key, 0) + 1
    store = Store(url, readonly=True)
    rows = store.runs()
    takeovers = [r["environment"]["takeover"] for r in rows if "takeover" in r["environment"]]
    return {"url": url, "runs": total, "workers": workers, "wall_seconds": wall,
            "exit_codes": codes, "events": events, "rows": rows,
            "done": sum(r["status"] == "done" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows),
            "finished_twice": sum(n > 1 for n in finished.values()),
            "finished_lines": sum(finished.values()), "takeovers": takeovers}


def single_process(folder: Path, seeds: int, steps: int) -> list[dict]:
    suite = folder / "cluster.toml"
    store = folder / "single.sqlite"
    began = time.time()
    subprocess.run([sys.executable, "-m", "attnarena", "run", "--suite", str(suite), "--store",
                    str(store), "--out", str(folder / "single"), "--train-only", "--quiet"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
                   stdout=subprocess.DEVNULL)
    return Store(store, readonly=True).runs(), time.time() - began


def claims(location, workers: int, count: int = 200) -> dict:
    Store(location).close()
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMS, location, f"w{k}", str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for k in range(workers)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    began = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    took = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        took += json.loads(out.strip().splitlines()[-1])
    wall = time.perf_counter() - began
    took.sort()
    return {"claims": len(took), "per_second": len(took) / wall,
            "median_ms": 1000 * statistics.median(took),
            "p95_ms": 1000 * took[int(0.95 * (len(took) - 1))]}


def _quality(row) -> tuple:
    m = row["metrics"]
    metric = m["metric"]
    return (m[f"test_{metric}"], m[f"best_val_{metric}"], json.dumps(m["history"]),
            m["steps"], m["params"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="attnarena-cluster-"))
    os.chmod(folder, 0o755)
    with LocalPostgres(folder / "pg") as server:
        result = suite_under_failure(server, folder, args.workers, args.seeds, args.steps)
        reference, single_wall = single_process(folder, args.seeds, args.steps)
        spread = {r["id"]: _quality(r) for r in result["rows"] if r["status"] == "done"}
        alone = {r["id"]: _quality(r) for r in reference}
        same = sum(spread.get(k) == v for k, v in alone.items())
        pg_claims = claims(server.create_database("claims"), args.workers)
        lite_claims = claims(str(folder / "claims.sqlite"), args.workers)
    e = result["events"]
    lines = [
        f"## {args.workers} workers, {result['runs']} runs, one PostgreSQL store",
        "",
        f"- wall time {result['wall_seconds']:.0f} s (one process, one thread, into SQLite: "
        f"{single_wall:.0f} s); 2 CPU cores",
        f"- killed by SIGKILL: {e.get('killed', {}).get('workers', 0)} workers holding leases, "
        f"at {e.get('killed', {}).get('at_done')} runs done "
        f"({e.get('killed', {}).get('seconds', 0):.0f} s in)",
        f"- server restarted at {e.get('restarted', {}).get('at_done')} runs done "
        f"({e.get('restarted', {}).get('seconds', 0):.0f} s in), down "
        f"{e.get('restarted', {}).get('down_seconds', 0):.1f} s",
        f"- worker exit codes: {result['exit_codes']}",
        f"- runs done: {result['done']} of {result['runs']}; failed: {result['failed']}; "
        f"finished more than once: {result['finished_twice']} "
        f"({result['finished_lines']} completions logged)",
        f"- taken over: {len(result['takeovers'])} runs, "
        f"{sum(t['how'].startswith('resumed') for t in result['takeovers'])} resumed from "
        f"their checkpoints, {sum(t['how'].startswith('restarted') for t in result['takeovers'])}"
        " restarted (no checkpoint written yet)",
        f"- quality equal to the single process's (test, best validation, history, steps, "
        f"params): {same} of {len(alone)} runs",
        "",
        f"## Claims, {args.workers} processes at once, 200 each",
        "",
        "| store | claims/s | median ms | p95 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, c in (("PostgreSQL", pg_claims), ("SQLite", lite_claims)):
        lines.append(f"| {name} | {c['per_second']:.0f} | {c['median_ms']:.1f} | "
                     f"{c['p95_ms']:.1f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"suite": {k: v for k, v in result.items() if k != "rows"}, "equal": same,
             "single_wall": single_wall, "claims": {"postgresql": pg_claims,
                                                    "sqlite": lite_claims}}, indent=2))
    ok = result["done"] == result["runs"] and not result["failed"] \
        and not result["finished_twice"] and same == len(alone)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
