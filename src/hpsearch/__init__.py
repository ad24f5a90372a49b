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
    from hpsearch.api import Study, load, run
    from hpsearch.task import Task

_API = ("Study", "load", "run")  # hpsearch.api imports torch and Optuna: on first use


def __getattr__(name: str) -> Any:
    # `Task` imports torch; importing it on first use lets `import hpsearch.config` (status,
    # plot, export read study files) run without torch.
    if name == "Task":
        from hpsearch.task import Task

        return Task
    if name in _API:
        import hpsearch.api

        return getattr(hpsearch.api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMismatch",
    "ForkError",
    "HpsearchError",
    "Study",
    "StudyFileError",
    "Task",
    "TaskError",
    "UsageError",
    "__version__",
    "load",
    "run",
]
