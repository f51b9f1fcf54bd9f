"""The conditions a timing was taken under: how much of the machine other processes used
meanwhile, and the spread of its repeats; a timing taken on a busy machine or with a wide
spread is flagged, and two timings are called different only when their spreads part."""
from __future__ import annotations

import os
import resource
import statistics
import time

BUSY_SHARE = 0.25  # others used over a quarter of the machine's cores meanwhile: "busy"
NOISY_SPREAD = 0.25  # interquartile range over a quarter of the median: "noisy"


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OthersLoad:
    """Context manager: ``share`` is the fraction of the machine's cores that other
    processes kept busy while the block ran (None where it cannot be read)."""

    def __enter__(self):
        self._start = (time.perf_counter(), _machine_busy_seconds(), _own_seconds())
        self.share = None
        return self

    def __exit__(self, *exc):
        wall, busy, own = self._start
        now_busy = _machine_busy_seconds()
        elapsed = time.perf_counter() - wall
        if busy is not None and now_busy is not None and elapsed > 0:
            others = (now_busy - busy) - (_own_seconds() - own)
            self.share = max(0.0, others / (elapsed * (os.cpu_count() or 1)))
        return False


def spread(times_ms: list[float]) -> dict:
    """min, quartiles and median of repeated timings (ms), and how many."""
    ordered = sorted(times_ms)
    if len(ordered) == 1:
        q1 = q3 = ordered[0]
    else:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    return {"median_ms": statistics.median(ordered), "min_ms": ordered[0], "q1_ms": q1,
            "q3_ms": q3, "repeats": len(ordered)}


def flags(row: dict) -> list[str]:
    """"busy" (others used the machine while it was timed) and "noisy" (a wide spread)."""
    out = []
    if (row.get("others_share") or 0.0) > BUSY_SHARE:
        out.append("busy")
    median, q1, q3 = row.get("median_ms"), row.get("q1_ms"), row.get("q3_ms")
    if median and q1 is not None and q3 is not None and (q3 - q1) / median > NOISY_SPREAD:
        out.append("noisy")
    return out


def compare(a: dict, b: dict) -> str:
    """"faster", "slower" or "tie": ``a`` is faster than ``b`` only when its interquartile
    range lies wholly below ``b``'s (rows without quartiles: by their medians)."""
    if None in (a.get("q1_ms"), a.get("q3_ms"), b.get("q1_ms"), b.get("q3_ms")):
        if a.get("median_ms") is None or b.get("median_ms") is None:
            return "tie"
        return "faster" if a["median_ms"] < b["median_ms"] else "slower"
    if a["q3_ms"] < b["q1_ms"]:
        return "faster"
    if b["q3_ms"] < a["q1_ms"]:
        return "slower"
    return "tie"
