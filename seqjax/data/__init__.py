"""Tasks and data pipelines: synthetic recall and copying tasks and byte-level text, in NumPy.

``create_task(name, **options)`` builds a task; ``available_tasks()`` lists the names.
"""

from seqjax.data import mqar, selective_copying, text  # noqa: F401  (registers the tasks)
from seqjax.data.base import Batch, Task, available_tasks, create_task

__all__ = ["Batch", "Task", "available_tasks", "create_task"]
