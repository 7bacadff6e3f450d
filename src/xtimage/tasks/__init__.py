"""Task families, one module each, behind one `Task` interface and the `TASKS` registry.

Adding a task: subclass `Task` in a new module here, register it under the name
``model.head`` takes, add the name to `xtimage.config.HEADS`, and import the module below.
"""

from xtimage.tasks import classification, detection, segmentation, xview3
from xtimage.tasks.base import (
    TASKS,
    Job,
    Prediction,
    Runner,
    Scorer,
    Task,
    get_task,
    task_class,
)

__all__ = [
    "TASKS",
    "Job",
    "Prediction",
    "Runner",
    "Scorer",
    "Task",
    "classification",
    "detection",
    "get_task",
    "segmentation",
    "task_class",
    "xview3",
]
