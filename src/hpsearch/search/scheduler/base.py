"""The scheduler seam: where a study's trials start from.

A worker settles what crashes left (takeovers, retries) the same way whatever the strategy; the
scheduler decides the rest: what is built before the first trial (a warm-up), where a new trial
starts (the base, a tree's survivor, or scratch) and with which hyperparameters, how long a trial
trains, and which checkpoints must outlive GC because new trials may still fork from them.
`hpsearch.testing.conformance.scheduler.SchedulerTestCase` checks a scheduler against these rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from hpsearch.lineage import CheckpointRow
from hpsearch.search.jobs import Job, Wait
from hpsearch.search.records import Mode
from hpsearch.training import Budget

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


class Scheduler(Protocol):
    mode: Mode

    @property
    def budget(self) -> Budget:
        """One trial's own training, from where it starts."""
        ...

    def prepare(self) -> None:
        """Build (or wait for, or continue) what new trials start from; runs once per worker,
        before its first trial."""
        ...

    def new_job(self, target: int) -> Job | Wait | None:
        """A new trial to run -- asked from Optuna, its parent chosen -- or None when the study
        needs no more (it has `target` trials finished or running), or WAIT when nothing can
        start before running trials finish."""
        ...

    def place(self, job: Job) -> None:
        """Set the job's segment (`until`, `total`, `probe`) where the scheduler decides it
        per trial; the worker's takeovers and retries come through here too."""
        ...

    def parent_of(self, t: FrozenTrial, trials: Sequence[FrozenTrial]) -> str | None:
        """Where trial `t`'s first segment starts when it recorded no parent (it was cut off
        before its start was recorded: a takeover or a retry continues it); None: from
        scratch. It follows from the strategy alone (the base; a tree node's parent's final
        checkpoint), never from which process asks. Raises UnusableCheckpoint when that
        parent is gone: the trial fails saying why rather than start elsewhere."""
        ...

    def pins(self, rows: Sequence[CheckpointRow]) -> set[str]:
        """Checkpoints GC must keep because new trials may still start from them."""
        ...
