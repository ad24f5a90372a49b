"""Stopping a run: the signals hpsearch handles and the errors that end a trial or a run."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hpsearch.errors import HpsearchError


class Interrupted(HpsearchError):
    """Ctrl-C or SIGTERM: the current state was checkpointed; the next run continues."""


class TrialCrashed(HpsearchError):
    """Too many trials of this run failed on errors (`trials.max_failures`): the study stops."""


class StudyStopped(HpsearchError):
    """Not a trial's fault (a full disk, an unwritable checkpoint directory): the study stops and
    the trial stays resumable, its retries untouched."""


class UnusableCheckpoint(HpsearchError):
    """No source a trial could start from can be restored: that trial fails, the study goes on."""


class LostTrial(HpsearchError):
    """Another worker took this trial over (we were declared dead): stop without committing."""


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps, so a stop never tears a step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        def handler(signum: int, _frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: give up on the clean stop
            # a second SIGTERM changes nothing: a scheduler stopping a job may send it to the
            # worker and to the script that started it, which forwards it (SLURM's requeue)
            self.signal = self.signal or signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
