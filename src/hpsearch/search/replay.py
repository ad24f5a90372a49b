"""The winner as a recipe: its lineage is a hyperparameter schedule, and replaying it from scratch
in one run gives its final weights again, bit for bit on the CPU.

A trial's recipe is its chain of segments: for a tree's node, its ancestors up to a root, each
trained to its own rung with its own values; for fork-from-base, the warm-up then the trial; for
a classic trial, one segment. `replay` trains the chain in memory -- each segment forked from the
one before, as the study forked it from a checkpoint -- with the study's evaluations (they draw
from the RNG as the study's did) and no checkpoints, and compares its final state with the
trial's final checkpoint where GC kept it. Exact resume is what makes the two agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import trial_hparams, warmup_hparams
from hpsearch.errors import HpsearchError, UsageError
from hpsearch.search.budgets import Budgets, segment_end
from hpsearch.search.records import study_attr, trial_attr
from hpsearch.search.session import Session
from hpsearch.training import Budget

if TYPE_CHECKING:  # the loop imports torch: `best` prints a recipe without it
    import torch

    from hpsearch.training import Trainer


@dataclass(frozen=True)
class Segment:
    """One stretch of the recipe: train with `hparams` from `start` to `end` samples."""

    trial: int | None  # None: the shared warm-up
    hparams: dict[str, Any]
    start: int
    end: int | None  # None: a budget in steps (fork-from-base with `steps` budgets)
    budget: Budget
    total: int  # the samples the segment's LR schedule spans


@dataclass(frozen=True)
class Replayed:
    trial: int
    segments: list[Segment]
    metrics: dict[str, float]
    value: float | None  # the trial's own value in the study
    compared: int  # tensors compared with the final checkpoint (0: it was not kept)
    differs: list[str]  # the tensors that differ (empty: bitwise identical)
    seconds: float


def winner(session: Session) -> FrozenTrial | None:
    """The study's best trial; in a fork tree, the best complete node of the deepest generation
    (an earlier node's value may be a cooldown probe's, not a model's)."""
    trials = [t for t in session.study.get_trials(deepcopy=False)
              if t.state == TrialState.COMPLETE and t.value is not None]  # fmt: skip
    if not trials:
        return None
    if session.settings.strategy == "tree" and not session.classic:
        deepest = max(int(trial_attr(t, "generation", 0)) for t in trials)
        trials = [t for t in trials if int(trial_attr(t, "generation", 0)) == deepest]
    sign = -1.0 if session.settings.objective.direction == "maximize" else 1.0
    return min(trials, key=lambda t: (sign * float(t.value or 0.0), t.number))


def recipe(session: Session, number: int) -> list[Segment]:
    """The segments that made trial `number`, first to last."""
    study, s = session.study, session.settings
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in by_number:
        raise UsageError(f"study {session.study_name} has no trial {number}")
    # the epoch the study trained with, as its runs recorded it: reading a recipe (`best`)
    # then needs neither the task nor torch
    n = int(session.attr("samples_per_epoch", 0) or 0) or session.samples_per_epoch()
    b = Budgets.of(session, n)
    t = by_number[number]
    if session.classic:
        hp = trial_hparams(s, t.params)
        budget = b.classic_budget()
        return [Segment(number, hp, 0, budget.samples, budget, segment_end(budget, 0, hp))]
    if s.strategy == "base":
        warm = warmup_hparams(s)
        start = int(study_attr(study, "warmup_samples") or b.warmup_samples)
        hp = trial_hparams(s, t.params)
        total = b.warmup_samples + b.trial_samples
        return [
            Segment(None, warm, 0, start, b.warmup, total),
            Segment(number, hp, start, b.trial.samples and start + b.trial.samples, b.trial,
                    segment_end(b.trial, start, hp)),
        ]  # fmt: skip
    return _tree_recipe(session, by_number, t, b)


def _tree_recipe(
    session: Session, by_number: dict[int, FrozenTrial], t: FrozenTrial, b: Budgets
) -> list[Segment]:
    assert session.settings.tree is not None
    full = b.trial_samples
    rungs = [round(f * full) for f in session.settings.tree.rungs]
    chain = [t]
    while (parent := trial_attr(chain[-1], "parent_trial")) is not None:
        if parent not in by_number:
            raise HpsearchError(f"trial {chain[-1].number}'s parent trial {parent} is missing")
        chain.append(by_number[parent])
    out, start = [], 0
    for node in reversed(chain):
        end = rungs[int(trial_attr(node, "generation", 0))]
        hp = trial_hparams(session.settings, node.params)
        out.append(Segment(node.number, hp, start, end, Budget(samples=end - start), full))
        start = end
    return out


def replay(
    session: Session, number: int, *, say: Callable[[str], None] = print
) -> tuple[Trainer, Replayed]:
    """Train trial `number`'s recipe from scratch in this process; compare with its checkpoint."""
    from hpsearch.training import Schedule, Trainer, fork

    s, began = session.settings, time.monotonic()
    segments = recipe(session, number)
    b = Budgets.of(session, session.samples_per_epoch())
    first = segments[0]
    trainer = Trainer.create(
        session.task(), dict(first.hparams), seed=s.seed, device=s.device,
        schedule=Schedule.of(s.schedule), total_samples=first.total,
        num_workers=s.data.num_workers, datasets=session.datasets(), objective=s.objective.metric,
        training=s.training,
    )  # fmt: skip
    metrics: dict[str, float] = {}
    for i, seg in enumerate(segments):
        if i:
            fork(trainer, seg.hparams)
            trainer.begin_segment()
            trainer.total_samples = seg.total
        who = "the warm-up" if seg.trial is None else f"trial {seg.trial}"
        say(f"replaying {who}: samples {seg.start}-{seg.end if seg.end is not None else '?'}")
        metrics = trainer.train(seg.budget, eval_every=b.eval_every, checkpoint_every=None)
    t = next((x for x in session.study.get_trials(deepcopy=False) if x.number == number), None)
    value = t.value if t is not None else None
    compared, differs = _compare(session, trainer, t)
    return trainer, Replayed(number, segments, metrics, value, compared, differs,
                             time.monotonic() - began)  # fmt: skip


def _compare(session: Session, trainer: Trainer, t: FrozenTrial | None) -> tuple[int, list[str]]:
    """Compare the replayed state's tensors with the trial's final checkpoint, bit for bit."""
    final = trial_attr(t, "final_checkpoint") if t is not None else None
    if not final or not session.store.exists(final):
        return 0, []
    loaded = session.store.load(final)
    mine, _ = trainer.state()
    compared, differs = 0, []
    for group, tensors in loaded.tensors.items():
        for name, saved in tensors.items():
            ours = mine.get(group, {}).get(name)
            compared += 1
            if ours is None or not _same(ours, saved):
                differs.append(f"{group}/{name}")
    return compared, differs


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    a = a.detach().cpu()
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
