"""What every part of a worker shares: the open study, the checkpointer, the stop flag, the
study's budgets and the worker's voice. Passed explicitly, so no part reaches into another."""

from __future__ import annotations

from dataclasses import dataclass

from hpsearch.config import StudySettings
from hpsearch.console import say
from hpsearch.lineage import Lineage
from hpsearch.search.budgets import Budgets
from hpsearch.search.control import Interrupted, StopFlag
from hpsearch.search.heartbeat import Heartbeat
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
