"""What a study has spent of its budget (`trials.budget`, full runs from scratch), read from its
trials alone, and the line `hpsearch run` prints before it trains: what it will do.

Spend is counted in training samples, each once: every trial's `samples_trained` (pruned and
failed trials, a tree's roots and probes included) and a single fork's warm-up. A full run is
what one classic trial trains: `trials.epochs` of a tree, the warm-up and a trial together
otherwise (`Budgets.full_samples`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import StudySettings
from hpsearch.config.budget import describe_tree, tree_cost
from hpsearch.search.records import trial_attr

if TYPE_CHECKING:
    from hpsearch.search.budgets import Budgets
    from hpsearch.search.session import Session


def budget_samples(settings: StudySettings, budgets: Budgets) -> int | None:
    """The budget in samples; None: the study has none (it runs `trials.n` trials)."""
    if settings.trials.budget is None:
        return None
    return round(settings.trials.budget * budgets.full_samples)


def spent_samples(trials: Sequence[FrozenTrial], warmup_samples: int = 0) -> int:
    """Samples the study's trials have trained (their last recorded count), plus the warm-up."""
    return warmup_samples + sum(int(trial_attr(t, "samples_trained", 0) or 0) for t in trials)


def budget_left(session: Session, budgets: Budgets, trials: Sequence[FrozenTrial]) -> bool:
    """May another trial start? Yes while what the finished trials spent, plus a trial's full
    budget for each one running (what they may still spend), is under the budget: a search
    stops starting trials once it has spent it, and several workers do not overshoot it by a
    trial each."""
    cap = budget_samples(session.settings, budgets)
    if cap is None:
        return True
    running = sum(1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    done = [t for t in trials if t.state not in (TrialState.RUNNING, TrialState.WAITING)]
    warm = int(session.attr("warmup_samples", 0) or 0) if not session.classic else 0
    per_trial = budgets.full_samples if session.classic else budgets.trial_samples
    return spent_samples(done, warm) + running * per_trial < cap


def plan_line(settings: StudySettings, *, classic: bool) -> str:
    """What the run will do, said before it trains."""
    n = settings.trials.processes
    line = _plan(settings, classic=classic)
    return line + (f"; each trial on {n} processes (trials.processes)" if n > 1 else "")


def _plan(settings: StudySettings, *, classic: bool) -> str:
    t = settings.trials
    budget = t.budget
    if classic:
        return (
            f"budget {budget:g} full runs: trials from scratch (TPE or the study's sampler, "
            f"its pruner) until {budget:g} full runs are spent"
            if budget is not None
            else f"{t.n} trials from scratch"
        )
    if settings.tree is not None:
        tree = settings.tree
        given = tree.sized or budget is None or abs(budget - tree_cost(tree)) > 1e-6
        line = describe_tree(tree, budget if given else None)
        sync = tree.promotion == "sync"
        return line + ("; generation by generation (tree.promotion: sync)" if sync else "")
    w = settings.warmup
    warm = f"{w.epochs:g} epochs" if w.epochs is not None else f"{w.steps} steps"
    if budget is None:
        return f"a warm-up of {warm}, then {t.n} trials forked from it"
    return (
        f"budget {budget:g} full runs: a warm-up of {warm} (counted in the budget), then "
        f"trials forked from it until {budget:g} full runs are spent"
    )


def spend_note(spent: int, budgets: Budgets, budget: float | None) -> str:
    """ "5.2 of 8 full runs" (or "5.2 full runs" without a budget)."""
    runs = spent / budgets.full_samples if budgets.full_samples else 0.0
    return f"{runs:.1f} of {budget:g} full runs" if budget is not None else f"{runs:.1f} full runs"
