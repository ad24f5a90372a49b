"""Typed errors. The CLI turns each into one message and an exit status; none is a bug report.

`UsageError` and its subclasses mean the user can fix the input (exit status 2); everything else
that derives from `HpsearchError` is a failure with a clear message (exit status 1).
"""

from __future__ import annotations


class HpsearchError(Exception):
    """Base of every error hpsearch raises on purpose."""


class UsageError(HpsearchError):
    """Bad input from the user: a study file, a command line, a task that does not fit."""


class StudyFileError(UsageError):
    """The study file is invalid. The message names the file, the key path, the rule and the fix."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = path
        self.key = key
        self.detail = message
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)


class TaskError(UsageError):
    """The user's task cannot be imported or does not implement what hpsearch needs."""


class ForkError(UsageError):
    """A hyperparameter cannot be applied to a restored training state."""


class CheckpointError(HpsearchError):
    """Base of the checkpoint errors."""


class CheckpointNotFound(CheckpointError):
    """No committed checkpoint with this id exists in the store."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint's files do not match its manifest: missing, wrong size or hash, bad format."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint was written by a newer format version than this hpsearch can read."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint does not fit the model or optimizer it is loaded into (names the keys)."""


class CheckpointWriteError(CheckpointError):
    """A save failed (disk full, permission, ...). Nothing partial was committed."""


class TrainingDiverged(HpsearchError):
    """The loss or a metric became NaN or infinite."""

    def __init__(self, what: str, value: float, step: int) -> None:
        self.what = what
        self.value = value
        self.step = step
        super().__init__(f"{what} became {value} at step {step}")


class RankSetupError(HpsearchError):
    """The ranks of a trial of `trials.processes: N` could not be started or do not agree."""


class RankLost(HpsearchError):
    """A rank of a trial of several processes died or stopped answering: the trial's other
    ranks stop with it, and the trial continues from its newest checkpoint."""
