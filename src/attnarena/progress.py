"""Progress lines for long work (training stages, distillation, evaluations): what is done,
the time spent and an estimate of the time left, at most every few seconds."""
from __future__ import annotations

import time


class Progress:
    """``step(done, detail)`` logs "WHAT done/total (detail), 12 s so far, about 30 s
    left" at the first and last step and at most every ``every`` seconds between."""

    def __init__(self, what: str, total: int, log, every: float = 10.0):
        self.what, self.total, self.log, self.every = what, total, log, every
        self.start = time.perf_counter()
        self.last = None

    def step(self, done: int, detail: str = "") -> None:
        if self.log is None:
            return
        now = time.perf_counter()
        if done not in (1, self.total) and self.last is not None \
                and now - self.last < self.every:
            return
        self.last = now
        spent = now - self.start
        left = spent / done * (self.total - done) if done else 0.0
        tail = f"about {_seconds(left)} left" if done < self.total else "done"
        extra = f" ({detail})" if detail else ""
        self.log(f"{self.what} {done}/{self.total}{extra}, {_seconds(spent)} so far, {tail}")


def _seconds(value: float) -> str:
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"
