"""hpsearch: hyperparameter search for PyTorch that branches Optuna trials from checkpoints."""

from __future__ import annotations

__version__ = "0.1.0"

from hpsearch.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    ForkError,
    HpsearchError,
    StudyFileError,
    TaskError,
    UsageError,
)
from hpsearch.task import Task

__all__ = [
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMismatch",
    "ForkError",
    "HpsearchError",
    "StudyFileError",
    "Task",
    "TaskError",
    "UsageError",
    "__version__",
]
