"""hpsearch: hyperparameter search for PyTorch that branches Optuna trials from checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from hpsearch.report.status import StudyHandle
    from hpsearch.task import Task


def __getattr__(name: str) -> Any:
    # `Task` imports torch; importing it on first use lets `import hpsearch.config` (status,
    # plot, export read study files) run without torch.
    if name == "Task":
        from hpsearch.task import Task

        return Task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(study_file: str, *, storage: str | None = None, classic: bool = False) -> StudyHandle:
    """Open an existing study for reading: `hpsearch.load("studies/x.yaml").dataframe()`."""
    from hpsearch.report.status import load as _load

    return _load(study_file, storage=storage, classic=classic)


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
    "load",
]
