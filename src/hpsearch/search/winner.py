"""The study's winner, by the one rule every surface uses.

**The winner is the COMPLETE trial with the best value; of equal values, the lowest trial
number.** A trial's value is always the evaluation of the model its final checkpoint holds (a
tree node's cooldown probe is recorded beside it, as `probe_value`), so the winner's checkpoint
holds the model that scored it, and `hpsearch replay` retrains that model. Optuna's
`study.best_trial` (and so optuna-dashboard) applies the same rule; the run's summary, `best`,
`best --export`, `replay`, `hpsearch.load().best_model()`, the plot and the export call `winner`
or `pick` here. In a fork tree a node whose place in the tree is damaged is left out (it has no
recipe); GC keeps the winner's final checkpoint whatever `keep_best` says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from hpsearch.search.scheduler.registry import strategy

if TYPE_CHECKING:
    from hpsearch.search.session import Session


def pick(candidates: Iterable[tuple[int, float | None]], direction: str) -> int | None:
    """The winning trial number among (number, value) pairs of COMPLETE trials: the best finite
    value, of equal values the lowest number; None when there is none."""
    sign = -1.0 if direction == "maximize" else 1.0
    scored = [(sign * v, n) for n, v in candidates if v is not None and math.isfinite(v)]
    return min(scored)[1] if scored else None


def winner(session: Session, trials: Sequence[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The study's winner (see the module docstring), or None before any trial completed;
    `trials`, if given, is the study's trials as just read."""
    if trials is None:
        trials = session.study.get_trials(deepcopy=False)
    damaged: set[int] = set()
    tree = session.settings.tree
    if tree is not None and strategy(session).nodes:
        from hpsearch.search.tree_nodes import check_nodes

        damaged = set(check_nodes(trials, tree).damaged)
    done = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    number = pick(
        ((n, t.value) for n, t in done.items() if n not in damaged),
        session.settings.objective.direction,
    )
    return done[number] if number is not None else None
