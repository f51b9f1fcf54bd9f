"""Tasks: data, metric and presets. A task registers itself with ``@register_task``."""
from attnarena.tasks.base import Task
from attnarena.tasks.registry import (create_task, list_tasks, register_task, task_options,
                                      task_presets)
from attnarena.tasks import (  # noqa: F401,E402,I001  (imported to register the tasks)
    copy, image, listops, mqar, pathfinder, probes, regression, state_tracking, text)

__all__ = ["Task", "create_task", "list_tasks", "register_task", "task_options", "task_presets"]
