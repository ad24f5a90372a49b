"""The study's budgets in the training loop's units."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.config import check_budgets
from hpsearch.training import Budget, Every, Progress

if TYPE_CHECKING:
    from hpsearch.search.session import Session


@dataclass(frozen=True)
class Budgets:
    """The study's budgets in the loop's units."""

    n: int  # training samples per epoch
    warmup: Budget
    trial: Budget
    eval_every: Every
    checkpoint_every: Every
    warmup_samples: int  # estimates for the schedule's total
    trial_samples: int

    @classmethod
    def of(cls, session: Session, n: int) -> Budgets:
        s = session.settings
        check_budgets(s, n)  # an epoch budget of 0 samples: a study-file error, before training
        bs = int(s.warmup.hparams["batch_size"])
        if s.warmup.epochs is not None:
            warmup, wsamples = (
                Budget(samples=round(s.warmup.epochs * n)),
                round(s.warmup.epochs * n),
            )
        else:
            steps = _given(s.warmup.steps)
            warmup, wsamples = Budget(steps=steps), steps * bs
        if s.trials.epochs is not None:
            trial, tsamples = Budget(samples=round(s.trials.epochs * n)), round(s.trials.epochs * n)
        else:
            steps = _given(s.trials.steps)
            trial, tsamples = Budget(steps=steps), steps * bs
        if s.trials.eval_every is not None:
            ev = Every(samples=max(1, round(s.trials.eval_every * n)))
        else:
            ev = Every(steps=s.trials.eval_every_steps)
        if s.checkpoints.every is not None:
            ck = Every(samples=max(1, round(s.checkpoints.every * n)))
        else:
            ck = Every(steps=s.checkpoints.every_steps)
        return cls(n, warmup, trial, ev, ck, wsamples, tsamples)

    @property
    def full_samples(self) -> int:
        """One full run from scratch, the unit of `trials.budget`: what a classic trial trains
        (a tree's warm-up is empty, so for a tree it is `trials.epochs`)."""
        return self.warmup_samples + self.trial_samples

    def classic_budget(self) -> Budget:
        if self.warmup.steps is not None and self.trial.steps is not None:
            return Budget(steps=self.warmup.steps + self.trial.steps)
        return Budget(samples=self.warmup_samples + self.trial_samples)


def segment_end(budget: Budget, origin_samples: int, hparams: Mapping[str, Any]) -> int:
    """Where the learning-rate schedule of a segment of `budget` starting at `origin_samples`
    ends, in samples (a budget in steps counts the segment's own batch size)."""
    if budget.samples is not None:
        return origin_samples + budget.samples
    return origin_samples + int(budget.steps or 0) * int(hparams["batch_size"])


def _given(steps: int | None) -> int:
    """A budget in steps where the study file has no budget in epochs (the reader ensures one)."""
    if steps is None:
        raise ValueError("a budget needs epochs or steps")
    return steps


def until(end: int, p: Progress) -> Budget:
    """The budget that trains a segment to the absolute sample `end` (it stops at the first step
    at or past it), from the segment's origin. A tree's node trains to its rung this way, and its
    replay must too: a segment given as a length would add its parent's overshoot past the rung
    (a rung falls between two batches) to its own."""
    return Budget(samples=max(0, end - p.origin_samples))
