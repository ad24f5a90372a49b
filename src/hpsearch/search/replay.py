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

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from hpsearch.errors import UsageError
from hpsearch.search.budgets import Budgets
from hpsearch.search.ranks import ranks_of, sizes_of
from hpsearch.search.recipes import Segment
from hpsearch.search.records import trial_attr
from hpsearch.search.scheduler.registry import strategy
from hpsearch.search.session import Session
from hpsearch.search.winner import winner

if TYPE_CHECKING:  # the loop imports torch: `best` prints a recipe without it
    import torch

    from hpsearch.training import Trainer

__all__ = ["Replayed", "Segment", "recipe", "replay", "winner"]


@dataclass(frozen=True)
class Replayed:
    trial: int
    segments: list[Segment]
    metrics: dict[str, float]
    value: float | None  # the trial's own value in the study
    compared: int  # tensors compared with the final checkpoint (0: it was not kept)
    differs: list[str]  # the tensors that differ (empty: bitwise identical)
    seconds: float
    metric: str = ""  # the objective's name

    @property
    def value_differs(self) -> bool:
        """The replayed objective is not the value the study recorded for the trial."""
        return self.value is not None and self.metrics.get(self.metric) != self.value

    @property
    def exact(self) -> bool:
        """Whatever the replay could compare with the study's record is the same, bit for bit."""
        return not self.differs and not self.value_differs


def recipe(session: Session, number: int) -> list[Segment]:
    """The segments that made trial `number`, first to last (the study's strategy says how:
    `Strategy.recipe`)."""
    by_number = {t.number: t for t in session.study.get_trials(deepcopy=False)}
    if number not in by_number:
        raise UsageError(f"study {session.study_name} has no trial {number}")
    # the epoch the study trained with, as its runs recorded it: reading a recipe (`best`)
    # then needs neither the task nor torch
    n = int(session.attr("samples_per_epoch", 0) or 0) or session.samples_per_epoch()
    b = Budgets.of(session, n)
    return strategy(session).recipe(session, by_number, by_number[number], b)


def replay(
    session: Session, number: int, *, say: Callable[[str], None] = print
) -> tuple[Trainer, Replayed]:
    """Train trial `number`'s recipe from scratch in this process; compare with its checkpoint."""
    import torch

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
    threads = torch.get_num_threads()
    team = contextlib.ExitStack()  # the study's ranks, if its trials have several
    try:
        if first.threads is not None:  # the ranks start with as many as rank 0 has
            torch.set_num_threads(first.threads)
        team.enter_context(ranks_of(s, trainer, sizes_of(trainer)))
        for i, seg in enumerate(segments):
            if i:
                fork(trainer, seg.hparams)
                trainer.begin_segment()
                trainer.total_samples = seg.total
            who = "the warm-up" if seg.trial is None else f"trial {seg.trial}"
            end = seg.end if seg.end is not None else "?"
            if seg.threads is not None and seg.threads != torch.get_num_threads():
                say(f"using {seg.threads} CPU threads, as the study did (not {threads})")
                torch.set_num_threads(seg.threads)
            say(f"replaying {who}: samples {seg.start}-{end}")
            budget = seg.budget_from(trainer.progress)
            metrics = trainer.train(budget, eval_every=b.eval_every, checkpoint_every=None)
    finally:
        team.close()
        torch.set_num_threads(threads)
    t = next((x for x in session.study.get_trials(deepcopy=False) if x.number == number), None)
    value = t.value if t is not None else None
    compared, differs = _compare(session, trainer, t)
    return trainer, Replayed(number, segments, metrics, value, compared, differs,
                             time.monotonic() - began, s.objective.metric)  # fmt: skip


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
