"""What a study's scheduler keeps for forks to come, read from the study alone: `hpsearch gc`
asks it without running a worker, so nothing here imports the schedulers (or torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial

from hpsearch.config import StudySettings
from hpsearch.lineage import LIVE, WARMUP, CheckpointRow
from hpsearch.lineage.gc import newest_committed
from hpsearch.search.scheduler.tree_plan import plan_of


def base_pins(rows: Sequence[CheckpointRow], base: Any) -> set[str]:
    """The base (every new trial forks from it); while no base is adopted, the warm-up's newest
    checkpoint (the warm-up continues from it). A base the study's attribute does not name as a
    committed base row of the tree (damaged, or the warm-up is not done) leaves every base row
    pinned: none is provably an orphan, and deleting the real one would end the study."""
    rows = [r for r in rows if r.status in (*LIVE, "deleting")]
    pins = {base} if isinstance(base, str) and base else set()
    if not any(r.id == base and r.trial == WARMUP and r.kind == "base" for r in rows):
        pins |= {r.id for r in rows if r.trial == WARMUP and r.kind == "base"}
    if not base:
        pins |= newest_committed([r for r in rows if r.trial == WARMUP])
    return pins


def tree_pins(trials: Sequence[FrozenTrial], settings: StudySettings) -> set[str]:
    """The checkpoints a tree study keeps for forks to come, read from its trials alone."""
    if settings.tree is None:
        return set()
    plan = plan_of(trials, settings.tree, settings.objective.direction, settings.trials.retries)
    return plan.protected()
