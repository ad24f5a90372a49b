"""Classic search: every trial trains from scratch for the warm-up's and a trial's budget
together -- the `--no-fork` twin study that benchmarks compare forking against."""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial

from hpsearch.lineage import CheckpointRow
from hpsearch.search import asking
from hpsearch.search.context import RunContext
from hpsearch.search.jobs import Job
from hpsearch.search.records import Mode
from hpsearch.training import Budget


class Classic:
    mode: Mode = "classic"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @property
    def budget(self) -> Budget:
        return self.ctx.budgets.classic_budget()

    def prepare(self) -> None:
        pass  # nothing is shared between trials

    def new_job(self, target: int) -> Job | None:
        return asking.new_job(self.ctx, target, parent=None)

    def place(self, job: Job) -> None:
        pass  # every trial trains the study's one budget

    def parent_of(self, t: FrozenTrial, trials: Sequence[FrozenTrial]) -> str | None:
        return None  # every trial starts from scratch

    def pins(self, rows: Sequence[CheckpointRow]) -> set[str]:
        return set()  # no trial starts from another's checkpoint
