"""Small argument checks shared across the package, with messages that say what was given."""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import math
import os

import torch


def check_int(value, name: str, minimum: int = 1) -> int:
    """Raise ValueError unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def check_real(value, name: str, *, low: float = 0.0, low_open: bool = False,
               high: float = math.inf, high_open: bool = False) -> float:
    """Raise ValueError unless ``value`` is a finite real (not a bool) in the given range;
    the default range is [0, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (low_open and value == low) or value > high \
            or (high_open and value == high):
        left = "(" if low_open or low == -math.inf else "["
        right = ")" if high_open or high == math.inf else "]"
        span = "" if (low, high) == (-math.inf, math.inf) else \
            f" in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"{name} must be a finite number{span}, got {value!r}")
    return value


def look_up(name, table: dict, kind: str, valid_label: str):
    """``table[name]``, or a ValueError naming the unknown ``kind`` with a did-you-mean and
    the valid names (``valid_label``, e.g. "valid tasks")."""
    if name not in table:
        close = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {kind} {name!r}{hint}; {valid_label}: "
                         f"{', '.join(sorted(table))}")
    return table[name]


def check_options(given, valid, owner: str) -> None:
    """ValueError naming the options in ``given`` that are not in ``valid`` (the options of
    ``owner``, e.g. "mixer 'gla'"), with a did-you-mean and the valid ones."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(valid), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for {owner}"
                         f"{hint}; valid options: {', '.join(sorted(valid)) or 'none'}")


class NonFiniteError(ValueError):
    """An input holds NaN or infinity."""


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite. A sum is finite only if every entry is, so one
    reduction answers in the common case (a fiftieth of ``isfinite(t).all()``'s time on a
    16 MiB float tensor here); a sum that overflowed falls through to the exact test."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Refuse NaN and infinity: one rule for every mechanism, so that a non-finite token can
    never leak into the outputs of earlier positions (0 x NaN is NaN in masked products)."""
    if not all_finite(tensor):
        where = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise NonFiniteError(f"{name} holds NaN or infinity (first at index {tuple(where)}); "
                             "mixers take finite inputs only")


def check_mask(mask, shape, what: str = "the input") -> None:
    """None, or a bool tensor of exactly ``shape`` = (batch, length) of ``what``, True = a
    real token: the one mask check of mixers, kernels and models."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = real token), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must have shape (batch, length) of {what} = {tuple(shape)}, "
                         f"got {tuple(mask.shape)}")


# -- where checks run ---------------------------------------------------------------------
# Inputs are checked once, where a user's call enters the package: a model's forward, or a
# mixer's or a kernel's when called directly. Calls made from inside an entered call skip
# the checks their caller already made, so layers and kernels on the timed path cost no
# reductions or host syncs. ``debug_checks(True)`` (or ATTNARENA_DEBUG_CHECKS=1) runs every
# check in every call, and the per-token checks of decoding states and outputs.

_debug = [os.environ.get("ATTNARENA_DEBUG_CHECKS", "0") not in ("", "0")]
_inside = contextvars.ContextVar("attnarena_inside", default=False)


def debug_checks_on() -> bool:
    """Whether every check runs in every call (``debug_checks``)."""
    return _debug[0]


def entering() -> bool:
    """Whether the current call is where a user's call enters (or debug checks are on): the
    place to check inputs."""
    return _debug[0] or not _inside.get()


@contextlib.contextmanager
def inside():
    """Calls made within skip the entry checks (their caller made them)."""
    token = _inside.set(True)
    try:
        yield
    finally:
        _inside.reset(token)


@contextlib.contextmanager
def debug_checks(on: bool = True):
    """Run every input check in every layer, and check decoding states and outputs at every
    token, while the block runs (``on=False``: only the checks at entry, the default)."""
    saved = _debug[0]
    _debug[0] = bool(on)
    try:
        yield
    finally:
        _debug[0] = saved
