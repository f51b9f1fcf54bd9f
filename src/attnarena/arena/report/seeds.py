"""Results over seeds: mean, spread and n; how many seeds reached a threshold; and the rule
by which a difference between two settings is called.

The rule: two settings differ only when both ran at least two seeds and their means lie
further apart than the sum of their standard deviations (the intervals mean +- sd do not
overlap), and, for accuracies, more than half a point apart. Anything closer is "within
spread": the seeds do not tell the two apart. Where
outcomes are bimodal (a seed either finds MQAR's recall or does not), the mean hides what
happened, so tables of accuracies also count the seeds that reached ``SOLVED``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from attnarena.arena.report.style import format_metric

SOLVED = 0.99  # a test accuracy at or above this counts as the task solved by that seed
# accuracies closer than half a point are never called different, however small the
# spread: at the evaluation sets' sizes (hundreds to thousands of examples) such a gap is a
# handful of examples
MIN_ACCURACY_GAP = 0.005


@dataclass(frozen=True)
class Spread:
    """One setting's values over its seeds."""

    values: tuple

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def sd(self) -> float:
        """Sample standard deviation (n - 1); 0 for one seed."""
        if self.n < 2:
            return 0.0
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (self.n - 1))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def reached(self, threshold: float = SOLVED, higher_is_better: bool = True) -> int:
        """How many seeds reached ``threshold`` (at or above it; at or below for errors)."""
        return sum((v >= threshold) if higher_is_better else (v <= threshold)
                   for v in self.values)


def spread(values) -> Spread:
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError("a spread needs at least one value")
    return Spread(values)


def call_difference(a: Spread, b: Spread, higher_is_better: bool = True,
                    min_gap: float = 0.0) -> str:
    """How ``a`` compares with ``b``: "better" or "worse" when the gap between the means
    exceeds the sum of the standard deviations (both with at least two seeds) and
    ``min_gap``, "within spread" when it does not, "one seed" when either has a single seed
    (no spread to judge by)."""
    if a.n < 2 or b.n < 2:
        return "one seed"
    gap = a.mean - b.mean
    if abs(gap) <= max(a.sd + b.sd, min_gap):
        return "within spread"
    return "better" if (gap > 0) == higher_is_better else "worse"


def min_gap(metric: str) -> float:
    """The smallest difference of ``metric`` that is ever called."""
    return MIN_ACCURACY_GAP if metric == "accuracy" else 0.0


def format_spread(s: Spread, metric: str) -> str:
    """``0.6120 ± 0.2104`` (one seed: the value alone)."""
    if s.n < 2:
        return format_metric(s.mean, metric)
    return f"{format_metric(s.mean, metric)} ± {format_metric(s.sd, metric)}"


def format_range(s: Spread, metric: str) -> str:
    """``0.2270 – 1.0000`` (one seed: ``-``)."""
    if s.n < 2:
        return "-"
    return f"{format_metric(s.low, metric)} – {format_metric(s.high, metric)}"
