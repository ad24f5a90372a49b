"""Schedulers: where a study's trials start from (see `base.Scheduler`), chosen through the one
registry of strategies (`registry.Strategy`, `registry.strategy_of`).

To add one: implement the `Scheduler` Protocol in a module here, give it a `Strategy` in
`registry.py`, and run `SchedulerTestCase` over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hpsearch.lineage import CheckpointRow
from hpsearch.search.scheduler.base import Scheduler
from hpsearch.search.scheduler.registry import Strategy, strategy, strategy_of

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpsearch.search.context import RunContext
    from hpsearch.search.restore import Restorer
    from hpsearch.search.session import Session


def make_scheduler(ctx: RunContext, restorer: Restorer) -> Scheduler:
    """The study's scheduler, as its strategy builds it."""
    return strategy(ctx.session).make(ctx, restorer)


def pins_of(
    session: Session,
    rows: Sequence[CheckpointRow],
    trials: Sequence[FrozenTrial] | None = None,
) -> set[str]:
    """The checkpoints a study's scheduler keeps, read from the study alone (for `hpsearch gc`,
    which runs no worker); `trials`, if given, is the study's trials as just read."""
    if trials is None:
        trials = session.study.get_trials(deepcopy=False)
    return strategy(session).pins(session, rows, trials)


__all__ = ["Scheduler", "Strategy", "make_scheduler", "pins_of", "strategy", "strategy_of"]
