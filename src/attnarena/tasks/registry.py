"""The task registry: tasks register with ``@register_task``; ``create_task`` builds one by
name with its options checked against their declared types."""
from __future__ import annotations

import dataclasses
import math

from attnarena._validate import check_int, check_options, check_real, look_up
from attnarena.tasks.base import Task

_TASKS: dict[str, type] = {}


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


def task_class(name):
    return look_up(name, _TASKS, "task", "valid tasks")


def task_presets(name: str) -> dict:
    return task_class(name).presets


def task_options(name: str) -> dict:
    """The options a task takes, with their defaults (the preset's values override them)."""
    return {f.name: f.default for f in dataclasses.fields(task_class(name)) if f.init}


def create_task(name: str, **options) -> Task:
    """Build a registered task; every option is checked against its declared type."""
    check_options(options, task_options(name), f"task {name!r}")
    cls = task_class(name)
    for field in dataclasses.fields(cls):
        if field.name in options:
            _check_option(name, field, options[field.name])
    return cls(**options)


def _check_option(task: str, field, value) -> None:
    """Range and type checks that follow a task option's declared type: ints are positive
    (seeds may be 0), floats finite, strings strings; ``| None`` admits None."""
    kind = str(field.type)
    if value is None and "None" in kind:
        return
    what = f"task {task!r} option {field.name}"
    if kind.startswith("int"):
        check_int(value, what, minimum=0 if field.name.endswith("seed") else 1)
    elif kind.startswith("float"):
        check_real(value, what, low=-math.inf)
    elif kind.startswith("str") and not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    elif kind.startswith("bool") and not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
