"""The task interface and registry.

A task makes batches of (inputs, targets, weights): token ids (B, L), next-token targets
(B, L) and per-position weights (B, L) saying which predictions count (1) and which do not
(0). Its metric is accuracy over weighted positions. Presets hold the published ("paper")
and CPU-sized ("cpu") model and training configurations.
"""
from __future__ import annotations

import abc
import difflib

import torch

_TASKS: dict[str, type] = {}


class Task(abc.ABC):
    """Base class. Subclasses set ``name``, ``presets`` and implement the rest."""

    name: str = ""
    presets: dict = {}

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids."""

    @property
    @abc.abstractmethod
    def sequence_length(self) -> int:
        """Length of every example."""

    @abc.abstractmethod
    def batch(self, size: int, generator: torch.Generator):
        """(inputs, targets, weights), each (size, sequence_length)."""


def register_task(cls):
    if not cls.name or cls.name in _TASKS:
        raise ValueError(f"task name {cls.name!r} is empty or already registered")
    for preset, values in cls.presets.items():
        if "task" not in values or "model" not in values or "train" not in values:
            raise ValueError(f"task {cls.name!r} preset {preset!r} needs task, model and train "
                             "sections")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def _task_class(name):
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), _TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(list_tasks())}")
    return _TASKS[name]


def task_presets(name: str) -> dict:
    return _task_class(name).presets


def create_task(name: str, **options) -> Task:
    cls = _task_class(name)
    try:
        return cls(**options)
    except TypeError as error:
        raise ValueError(f"bad options for task {name!r}: {error}") from None
