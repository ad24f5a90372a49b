"""Schedulers: where a study's trials start from (see `base.Scheduler`).

To add one: implement the `Scheduler` Protocol in a module here, pick it in `make_scheduler`
(and its GC pins in `pins_of`), and run `SchedulerTestCase` over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hpsearch.lineage import CheckpointRow
from hpsearch.search.records import study_attr
from hpsearch.search.scheduler.base import Scheduler

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpsearch.search.context import RunContext
    from hpsearch.search.restore import Restorer
    from hpsearch.search.session import Session


def make_scheduler(ctx: RunContext, restorer: Restorer) -> Scheduler:
    from hpsearch.search.scheduler.classic import Classic
    from hpsearch.search.scheduler.fork_from_base import ForkFromBase
    from hpsearch.search.scheduler.tree import Tree

    if ctx.session.classic:
        return Classic(ctx)
    if ctx.settings.strategy == "tree":
        return Tree(ctx)
    return ForkFromBase(ctx, restorer)


def pins_of(
    session: Session,
    rows: Sequence[CheckpointRow],
    trials: Sequence[FrozenTrial] | None = None,
) -> set[str]:
    """The checkpoints a study's scheduler keeps, read from the study alone (for `hpsearch gc`,
    which runs no worker); `trials`, if given, is the study's trials as just read."""
    from hpsearch.search.scheduler.pins import base_pins, tree_pins

    if session.classic:
        return set()
    if session.settings.strategy == "tree":
        if trials is None:
            trials = session.study.get_trials(deepcopy=False)
        return tree_pins(trials, session.settings)
    return base_pins(rows, study_attr(session.study, "base_checkpoint"))


__all__ = ["Scheduler", "make_scheduler", "pins_of"]
