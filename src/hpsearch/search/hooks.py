"""The training loop's hooks during a study: Optuna reports and pruning, checkpoints, heartbeats,
the progress bar, and the stop flag."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.console import Bar
from hpsearch.errors import TaskError
from hpsearch.lineage import WARMUP
from hpsearch.search.control import Interrupted, LostTrial
from hpsearch.training import Budget, Hooks, Trainer

if TYPE_CHECKING:
    from hpsearch.search.runner import Worker


class TrialHooks(Hooks):
    """Bridges the training loop to Optuna, the checkpoint tree, heartbeats and the progress bar."""

    def __init__(
        self,
        worker: Worker,
        trainer: Trainer,
        trial: int,
        token: str,
        budget: Budget,
        bar: Bar,
        *,
        parent: str | None,
        otrial: optuna.Trial | None = None,
    ) -> None:
        self.w, self.trial, self.token, self.budget, self.bar = worker, trial, token, budget, bar
        self.otrial = otrial
        self.last = parent  # newest checkpoint of this chain
        self.parent = parent
        self.last_value: float | None = None
        self.stopping = False
        self.beat_every = worker.settings.trials.heartbeat_s
        self.next_beat = time.monotonic() + self.beat_every
        self.steps = 0
        self.samples = 0
        self.reported: set[int] = set()
        if otrial is not None:
            ft = worker.s.study._storage.get_trial(otrial._trial_id)
            self.reported = set(ft.intermediate_values)
        worker.s.lineage.heartbeat(token, start_step=trainer.progress.step)

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.steps += 1
        self.samples += len(indices)
        self.bar.update(_budget_done(self.budget, trainer.progress, self.w.plan.n),
                        f"loss {loss:.4g}")  # fmt: skip
        now = time.monotonic()
        if now >= self.next_beat:
            self.next_beat = now + self.beat_every
            if not self.w.s.lineage.heartbeat(self.token, steps=self.steps, samples=self.samples):
                raise LostTrial("another worker took this trial over")
        if self.w.stop:
            raise Interrupted(f"stopped by signal {self.w.stop.signal}")

    def on_eval(self, trainer: Trainer, index: int, metrics: dict[str, float]) -> None:
        metric = self.w.metric
        if metric not in metrics:
            raise TaskError(
                f"objective.metric {metric!r} is not among the metrics evaluate() returned "
                f"({', '.join(sorted(metrics))})"
            )
        value = metrics[metric]
        self.last_value = value
        self.bar.update(self.bar.done, f"{metric} {value:.4g}")
        if self.otrial is None:
            return
        study = self.w.s.study
        if index not in self.reported:
            self.otrial.report(value, index)  # through the Trial: should_prune reads its cache
            self.reported.add(index)
        if self.budget.reached(trainer.progress):
            # the final evaluation: the trial is done, and its result (and final checkpoint) is
            # worth more to the sampler than the compute a prune here would save -- none
            prune = False
        elif index >= max(self.reported):
            prune = self.otrial.should_prune()
        else:
            # a continuation recomputing what a killed attempt reported: decide as the
            # uninterrupted run did at this step, without the reports that came after it
            ft = copy.deepcopy(study._storage.get_trial(self.otrial._trial_id))
            ft.intermediate_values = {k: v for k, v in ft.intermediate_values.items() if k <= index}
            prune = study.pruner.prune(study, ft)
        if prune:
            raise optuna.TrialPruned(f"pruned at evaluation {index}")

    def on_checkpoint(self, trainer: Trainer) -> None:
        lin = self.w.s.lineage
        if not lin.heartbeat(self.token, steps=self.steps, samples=self.samples):
            raise LostTrial("another worker took this trial over")
        final = self.budget.reached(trainer.progress) and not self.stopping
        if self.trial == WARMUP:
            kind = "base" if final else "warmup"
        else:
            kind = "final" if final else "trial"
        ckpt = self.w.ckpt.save(
            trainer, trial=self.trial, kind=kind, parent=self.last, attempt=self.token,
            supersedes=self.last if self.last != self.parent else None,
        )  # fmt: skip
        self.last = ckpt


def _budget_done(b: Budget, p: Any, n: int) -> float:
    if b.samples is not None:
        return (p.samples - p.origin_samples) / n
    return float(p.step - p.origin_step)
