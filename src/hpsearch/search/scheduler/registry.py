"""The one registry of strategies: every fact a caller decides by a study's strategy, in one
record per scheduler, chosen in one function (`strategy_of`) from the study file's settings and
`--no-fork`: a file with a `tree:` section runs `TREE` (the asynchronous or the synchronous
plan, as `tree.promotion` says), one with a `warmup:` section `BASE`, and `--no-fork` the
classic twin of either.

Callers ask the record, never the strategy's name: the worker builds its scheduler with `make`,
GC keeps `pins`, `replay` and `best` read `recipe`, the runner refuses `--trials` where `sized`,
the winner, `status`, `tree`, the plot and the CLI's warnings treat trials as tree nodes where
`nodes`, and a trial that cannot start from its parent starts over from scratch where
`restarts`. Nothing here imports torch or a scheduler until `make` runs (`hpsearch gc`, `best`
and `status` read a study without either).

To add a scheduler: implement `base.Scheduler` in a module of this package, add its `Strategy`
to `STRATEGIES` and its choice to `strategy_of`, and run
`testing.conformance.scheduler.SchedulerTestCase` over it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from hpsearch.config import StudySettings
from hpsearch.config.sections import UNBOUNDED
from hpsearch.lineage import CheckpointRow
from hpsearch.search.recipes import Segment, base_recipe, classic_recipe, tree_recipe
from hpsearch.search.records import Mode, study_attr
from hpsearch.search.scheduler.pins import base_pins, tree_pins

if TYPE_CHECKING:
    from hpsearch.search.budgets import Budgets
    from hpsearch.search.context import RunContext
    from hpsearch.search.restore import Restorer
    from hpsearch.search.scheduler.base import Scheduler
    from hpsearch.search.session import Session

Pins = Callable[["Session", Sequence[CheckpointRow], Sequence[FrozenTrial]], set[str]]
Recipe = Callable[["Session", dict[int, FrozenTrial], FrozenTrial, "Budgets"], list[Segment]]


@dataclass(frozen=True)
class Strategy:
    """A way of running a study's trials, and what every caller needs to know of it."""

    name: str  # as the docs and messages call it
    mode: Mode  # recorded on the study (`hpsearch.mode`), for Optuna's own tools
    make: Callable[[RunContext, Restorer], Scheduler]  # the worker's scheduler
    pins: Pins  # what GC keeps for trials to come, read from the study alone
    recipe: Recipe  # the segments that made a trial (`replay`, `best`)
    nodes: bool = False  # its trials are fork-tree nodes: slots, damaged nodes, tree views
    sized: bool = False  # its size follows from the study file: `--trials` is refused
    restarts: bool = False  # a trial whose start is unusable starts over from scratch
    unbounded: bool = False  # without `--trials` it runs until the budget is spent

    def target(self, settings: StudySettings, trials: int | None) -> int:
        """How many finished trials a run aims at (`--trials`, else the study file's)."""
        if trials is not None:
            return trials
        return UNBOUNDED if self.unbounded else settings.trials.n


# -- the schedulers, built lazily (they import torch) -----------------------------------------


def _tree(ctx: RunContext, restorer: Restorer) -> Scheduler:
    from hpsearch.search.scheduler.tree import Tree

    return Tree(ctx)


def _base(ctx: RunContext, restorer: Restorer) -> Scheduler:
    from hpsearch.search.scheduler.fork_from_base import ForkFromBase

    return ForkFromBase(ctx, restorer)


def _classic(ctx: RunContext, restorer: Restorer) -> Scheduler:
    from hpsearch.search.scheduler.classic import Classic

    return Classic(ctx)


def _tree_pins(
    session: Session, rows: Sequence[CheckpointRow], trials: Sequence[FrozenTrial]
) -> set[str]:
    return tree_pins(trials, session.settings)


def _base_pins(
    session: Session, rows: Sequence[CheckpointRow], trials: Sequence[FrozenTrial]
) -> set[str]:
    return base_pins(rows, study_attr(session.study, "base_checkpoint"))


def _no_pins(
    session: Session, rows: Sequence[CheckpointRow], trials: Sequence[FrozenTrial]
) -> set[str]:
    return set()  # no trial starts from another's checkpoint


# the fork tree (`tree.promotion` picks its plan: `tree_plan.plan_of`), fork-from-base (a
# `warmup:` section), and classic (`--no-fork`, the twin of either)
TREE = Strategy("fork tree", "tree", _tree, _tree_pins, tree_recipe, nodes=True, sized=True)
BASE = Strategy("fork from a base", "fork", _base, _base_pins, base_recipe)
CLASSIC = Strategy("classic", "classic", _classic, _no_pins, classic_recipe, restarts=True)
CLASSIC_TWIN_OF_TREE = Strategy(
    "classic", "classic", _classic, _no_pins, classic_recipe, restarts=True, unbounded=True
)  # the twin of a tree spends the tree's budget, however many trials that takes
STRATEGIES: tuple[Strategy, ...] = (TREE, BASE, CLASSIC, CLASSIC_TWIN_OF_TREE)


def strategy_of(settings: StudySettings, *, classic: bool) -> Strategy:
    """The study's strategy: the one place that reads `settings.strategy` and `--no-fork`."""
    if classic:
        return CLASSIC_TWIN_OF_TREE if settings.strategy == "tree" else CLASSIC
    return TREE if settings.strategy == "tree" else BASE


def strategy(session: Session) -> Strategy:
    """The strategy of an open study (its settings, and whether it is the classic twin)."""
    return strategy_of(session.settings, classic=session.classic)


__all__ = ["STRATEGIES", "Strategy", "strategy", "strategy_of"]
