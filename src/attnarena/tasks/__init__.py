"""Tasks: data, metric and presets. A task registers itself with ``@register_task``."""
from attnarena.tasks.base import Task, create_task, list_tasks, register_task, task_presets
from attnarena.tasks import copy, image, listops, mqar, pathfinder, probes, regression, \
    text  # noqa: F401,E402  (registration)

__all__ = ["Task", "create_task", "list_tasks", "register_task", "task_presets"]
