"""Tasks and data pipelines in NumPy: synthetic recall, copying and induction tasks, formal
languages and state tracking with test splits at longer lengths, MNIST-1D, time-series
classification, and byte-level text from a file or a TFDS dataset.

``create_task(name, **options)`` builds a task; ``available_tasks()`` lists the names.
"""

from seqjax.data import (  # noqa: F401  (registers the tasks)
    chomsky,
    induction_heads,
    mnist_1d,
    mqar,
    selective_copying,
    seq2seq,
    state_tracking,
    tagging,
    text,
    tfds_text,
    time_series,
)
from seqjax.data.base import Batch, Task, available_tasks, create_task, default_options
from seqjax.data.lengths import LengthGeneralizationTask, LengthTestSplit

__all__ = [
    "Batch",
    "LengthGeneralizationTask",
    "LengthTestSplit",
    "Task",
    "available_tasks",
    "create_task",
    "default_options",
]
