"""What every part of a worker shares: the open study, the checkpointer, the stop flag, the
study's budgets and the worker's voice. Passed explicitly, so no part reaches into another."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hpsearch.config import StudySettings
from hpsearch.console import say
from hpsearch.lineage import Lineage
from hpsearch.search.budgets import Budgets
from hpsearch.search.control import Interrupted, StopFlag
from hpsearch.search.heartbeat import Heartbeat
from hpsearch.search.ranks import Ranks
from hpsearch.search.saving import Checkpointer
from hpsearch.search.session import Session


@dataclass
class RunContext:
    session: Session
    checkpointer: Checkpointer
    stop: StopFlag
    budgets: Budgets
    heartbeat: Heartbeat
    label: str = ""
    exhausted: bool = False  # the sampler stopped the study (a covered grid): ask no more
    presence: str = ""  # this worker's own attempt (presence row): holds its pins and leases
    pins: set[str] = field(default_factory=set)
    ranks: Ranks | None = None  # the worker's team of ranks (trials.processes), made on first use

    @property
    def team(self) -> Ranks:
        if self.ranks is None:
            self.ranks = Ranks(self.settings, self.session.sizes)
        return self.ranks

    def pin(self, ids: Iterable[str | None]) -> None:
        """Hold checkpoints a job is about to start from, so that no worker's GC deletes them
        before the trial records where it started (after which the tree keeps them)."""
        for ckpt_id in ids:
            if ckpt_id and ckpt_id not in self.pins:
                self.lineage.pin(ckpt_id, self.presence, ttl_s=self.settings.trials.grace_s)
                self.pins.add(ckpt_id)

    def unpin_all(self) -> None:
        for ckpt_id in self.pins:
            self.lineage.unpin(ckpt_id, self.presence)
        self.pins.clear()

    @property
    def settings(self) -> StudySettings:
        return self.session.settings

    @property
    def lineage(self) -> Lineage:
        return self.session.lineage

    @property
    def metric(self) -> str:
        return self.session.settings.objective.metric

    def say(self, msg: str) -> None:
        say(f"{self.label}{msg}")

    def check_stop(self) -> None:
        if self.stop:
            raise Interrupted(f"stopped by signal {self.stop.signal}")
