"""A trial's recipe: the chain of segments that made it, as each strategy trains its trials
(`Strategy.recipe` in `scheduler/registry.py` names one of these). Pure reading of the study: no
task, no torch, so `best` prints a recipe without either."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from hpsearch.config import trial_hparams, warmup_hparams
from hpsearch.errors import HpsearchError
from hpsearch.search.budgets import Budgets, segment_end, until
from hpsearch.search.records import study_attr, trial_attr
from hpsearch.search.tree_nodes import check_nodes
from hpsearch.training import Budget, Progress

if TYPE_CHECKING:
    from hpsearch.search.session import Session

__all__ = ["Segment", "base_recipe", "classic_recipe", "tree_recipe"]


@dataclass(frozen=True)
class Segment:
    """One stretch of the recipe: train with `hparams` from `start` to the absolute sample `end`
    (the first step at or past it), as the study trained it; a budget in steps is counted from
    where the segment starts."""

    trial: int | None  # None: the shared warm-up
    hparams: dict[str, Any]
    start: int
    end: int | None  # None: a budget in steps (fork-from-base with `steps` budgets)
    budget: Budget
    total: int  # the samples the segment's LR schedule spans
    # torch's intra-op threads the study trained it with: on the CPU, a matrix product splits
    # its sums by thread, so another count gives other bits (None: not recorded)
    threads: int | None = None

    def budget_from(self, p: Progress) -> Budget:
        """What the segment trains from `p`, the trainer at its start."""
        return until(self.end, p) if self.end is not None else self.budget


def classic_recipe(
    session: Session, by_number: dict[int, FrozenTrial], t: FrozenTrial, b: Budgets
) -> list[Segment]:
    """A classic trial: one segment from scratch over the warm-up's and a trial's budget."""
    hp = trial_hparams(session.settings, t.params)
    budget = b.classic_budget()
    return [Segment(t.number, hp, 0, budget.samples, budget, segment_end(budget, 0, hp),
                    _threads(t))]  # fmt: skip


def base_recipe(
    session: Session, by_number: dict[int, FrozenTrial], t: FrozenTrial, b: Budgets
) -> list[Segment]:
    """A trial forked from the base: the shared warm-up, then the trial."""
    s = session.settings
    warm = warmup_hparams(s)
    start = int(study_attr(session.study, "warmup_samples") or b.warmup_samples)
    hp = trial_hparams(s, t.params)
    total = b.warmup_samples + b.trial_samples
    return [
        Segment(None, warm, 0, start, b.warmup, total, _threads(t)),
        Segment(t.number, hp, start, b.trial.samples and start + b.trial.samples, b.trial,
                segment_end(b.trial, start, hp), _threads(t)),
    ]  # fmt: skip


def tree_recipe(
    session: Session, by_number: dict[int, FrozenTrial], t: FrozenTrial, b: Budgets
) -> list[Segment]:
    """A node's ancestors from its root down to it, each trained to its own rung with its own
    values; a node whose place in the tree (or an ancestor's) is damaged has no recipe."""
    tree = session.settings.tree
    assert tree is not None
    nodes = check_nodes(list(by_number.values()), tree)
    if t.number not in nodes.slots:
        why = nodes.damaged.get(t.number, "it holds no place in the tree")
        raise HpsearchError(f"trial {t.number} has no recipe: {why}")
    full = b.trial_samples
    rungs = [round(f * full) for f in tree.rungs]
    out, start = [], 0
    for number in reversed(nodes.lineage(t.number)):
        node = by_number[number]
        end = rungs[nodes.slots[number][0]]
        hp = trial_hparams(session.settings, node.params)
        out.append(Segment(number, hp, start, end, Budget(samples=end - start), full,
                           _threads(node)))  # fmt: skip
        start = end
    return out


def _threads(t: FrozenTrial) -> int | None:
    n = trial_attr(t, "threads")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
