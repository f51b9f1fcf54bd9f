"""The one timer of the arena: speed sweeps, compression and linearization time their calls
through it, so every figure is taken the same way.

Calls are timed round-robin: each repeat runs every call once (as a burst of ``burst``
calls, so timer resolution and scheduler noise average out of sub-millisecond calls), so
that drift in the machine's speed over the measurement falls on all of them alike. Each
call's figures are its median and quartiles over the repeats, with the share of the
machine other processes used meanwhile.
"""
from __future__ import annotations

import time

import torch

from attnarena.arena.measure.conditions import OthersLoad, spread
from attnarena.arena.measure.memory import PeakMemory


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(calls: dict, device, repeats: int, burst: int = 1,
               warm_up: bool = True) -> dict:
    """{key: {"median_ms", "min_ms", "q1_ms", "q3_ms", "repeats", "iterations",
    "others_share"}} of each ``calls[key]()``, timed round-robin ``repeats`` times, each
    sample a burst of ``burst`` calls (per-call milliseconds)."""
    if warm_up:
        for call in calls.values():
            call()  # one-time allocations and lazy set-up stay out of the figures
        sync(device)
    times = {key: [] for key in calls}
    with OthersLoad() as load:
        for _ in range(repeats):
            for key, call in calls.items():
                start = time.perf_counter()
                for _ in range(burst):
                    call()
                sync(device)
                times[key].append((time.perf_counter() - start) / burst * 1e3)
    return {key: {**spread(samples), "iterations": burst, "others_share": load.share}
            for key, samples in times.items()}


def peak_memory_mb(call, device) -> float | None:
    """Peak memory (MiB) of one more call, None where it cannot be measured."""
    with PeakMemory(device) as memory:
        call()
    return None if memory.peak_bytes is None else memory.peak_bytes / 2**20


def side_by_side(models, cells_of, device, repeats: int = 5) -> list[dict]:
    """Time every model's cells (``cells_of(model)``: {(key, ...): call}) round-robin in one
    ``time_calls``. Returns, per model, nested dicts of {"ms": median, "q1_ms", "q3_ms"
    (quartiles), "repeats", "others_share", "peak_mb": peak memory of one more call} along
    each cell's key path."""
    cells = [cells_of(m) for m in models]
    flat = {(index, key): call for index, calls in enumerate(cells)
            for key, call in calls.items()}
    timed = time_calls(flat, device, repeats)
    out = []
    for index, calls in enumerate(cells):
        nested = {}
        for key, call in calls.items():
            place = nested
            for part in key[:-1]:
                place = place.setdefault(part, {})
            kept = timed[(index, key)]
            place[key[-1]] = {"ms": kept["median_ms"], "q1_ms": kept["q1_ms"],
                              "q3_ms": kept["q3_ms"], "repeats": kept["repeats"],
                              "others_share": kept["others_share"],
                              "peak_mb": peak_memory_mb(call, device)}
        out.append(nested)
    return out
