"""The training loop's hooks during a study: Optuna reports and pruning, checkpoints, heartbeats,
the progress bar, and the stop flag."""

from __future__ import annotations

import sys
from typing import Any

import optuna

from hpsearch.console import Bar
from hpsearch.errors import CheckpointError, TaskError
from hpsearch.lineage import WARMUP, CheckpointKind
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.context import RunContext
from hpsearch.search.control import Interrupted, LostTrial, StudyStopped
from hpsearch.search.loggers import LINEAGE_KEYS, Loggers, TrialEnd, open_loggers
from hpsearch.search.records import trial_attr
from hpsearch.training import Budget, Hooks, Trainer


class TrialHooks(Hooks):
    """Bridges the training loop to Optuna, the checkpoint tree, heartbeats and the progress bar."""

    def __init__(
        self,
        ctx: RunContext,
        trainer: Trainer,
        trial: int,
        token: str,
        budget: Budget,
        bar: Bar,
        *,
        parent: str | None,
        otrial: optuna.Trial | None = None,
    ) -> None:
        self.ctx, self.trial, self.token, self.budget, self.bar = ctx, trial, token, budget, bar
        self.trainer, self.otrial = trainer, otrial
        self.last = parent  # newest checkpoint of this chain
        self.parent = parent
        self.last_value: float | None = None
        self.stopping = False
        self.steps = 0
        self.samples = 0
        # added to the evaluation index of the segment to make the step reported to Optuna: a
        # tree's node reports where it is since scratch, so the nodes a pruner compares at one
        # step are those of one generation, which start at the same point
        self.step_offset = 0  # (a tree's pruner waits from the node's fork: search.pruning)
        self.reported: set[int] = set()
        self.pruned = self.finished = self.lost = False  # how the attempt ended, for the loggers
        self.loggers: Loggers | None = None
        if otrial is not None:
            self.reported = set(bridge.known(otrial).intermediate_values)
            self.loggers = open_loggers(ctx.settings.loggers, ctx.session.study_name, trial)
        ctx.lineage.heartbeat(token, start_step=trainer.progress.step)
        ctx.heartbeat.watch(token)

    def close(self) -> None:
        """The attempt's training is over (or stopped): its heartbeats stop with it. Called from
        the trial's `finally`, so the exception on its way out (if any) says how it ended."""
        self.ctx.heartbeat.forget(self.token)
        self.bar.close()
        if self.loggers is not None:
            self._close_loggers(sys.exc_info()[1])

    def evaluations(self) -> list[dict[str, Any]]:
        """Every evaluation of the trial's own segment (a retry's includes those of the attempt
        it continues), with all of evaluate()'s metrics: {step, samples, index, <metric>...}.
        The trainer's history holds them and every checkpoint saves it, so a killed attempt's
        come back with the checkpoint its continuation starts from."""
        origin = self.trainer.progress.origin_samples
        return [
            {k: v for k, v in h.items() if k != "segment_samples"}
            for h in self.trainer.history
            if h["samples"] > origin
        ]

    def _close_loggers(self, leaving: BaseException | None) -> None:
        assert self.loggers is not None and self.otrial is not None
        if self.lost or isinstance(leaving, (Interrupted, StudyStopped)):
            self.loggers.close()  # the trial goes on later, or in another worker: logged then
            return
        state = "COMPLETE" if self.finished else "PRUNED" if self.pruned else "FAIL"
        ft = bridge.frozen(self.ctx.session.study, bridge.trial_id(self.otrial))
        lineage = {k: trial_attr(ft, k) for k in LINEAGE_KEYS}
        info = TrialEnd(
            self.ctx.session.study_name, self.trial, state, dict(self.trainer.hparams),
            {k: v for k, v in lineage.items() if v is not None}, self.evaluations(),
        )  # fmt: skip
        self.loggers.end(info)

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.steps += 1
        self.samples += len(indices)
        self.bar.update(_budget_done(self.budget, trainer.progress, self.ctx.budgets.n),
                        f"loss {loss:.4g}")  # fmt: skip
        self.ctx.heartbeat.count(self.token, self.steps, self.samples)
        if self.ctx.heartbeat.lost(self.token):
            self.lost = True
            raise LostTrial("another worker took this trial over")
        self.ctx.check_stop()

    def on_eval(self, trainer: Trainer, index: int, metrics: dict[str, float]) -> None:
        index += self.step_offset
        metric = self.ctx.metric
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
        if self.loggers is not None:
            self.loggers.evaluation(trainer.progress.step, metrics)
        study = self.ctx.session.study
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
            prune = bridge.prune_as_of(study, bridge.trial_id(self.otrial), index)
        if prune:
            self.pruned = True
            raise optuna.TrialPruned(f"pruned at evaluation {index}")

    def on_checkpoint(self, trainer: Trainer) -> None:
        lin = self.ctx.lineage
        if not lin.heartbeat(self.token, steps=self.steps, samples=self.samples):
            self.lost = True
            raise LostTrial("another worker took this trial over")
        final = self.budget.reached(trainer.progress) and not self.stopping
        kind: CheckpointKind
        if self.trial == WARMUP:
            kind = "base" if final else "warmup"
        else:
            kind = "final" if final else "trial"
        ckpt = self.ctx.checkpointer.save(
            trainer, trial=self.trial, kind=kind, parent=self.last, attempt=self.token,
            supersedes=self.last if self.last != self.parent else None,
        )  # fmt: skip
        self.last = ckpt
        self.finished = kind == "final"


def progress_bar(label: str, b: Budget, n: int) -> Bar:
    if b.samples is not None:
        return Bar(label, b.samples / n, unit=" epochs")
    return Bar(label, float(b.steps or 0), unit=" steps")


def checkpoint_on_stop(ctx: RunContext, trainer: Trainer, hooks: TrialHooks) -> None:
    """On a clean stop: save the current state unless it is saved already."""
    try:
        if trainer.saved_step != trainer.progress.step:
            hooks.stopping = True
            trainer.checkpoint(hooks)
        ctx.checkpointer.flush()
    except CheckpointError as exc:
        print(f"warning: could not checkpoint on stop: {exc}", file=sys.stderr)


def _budget_done(b: Budget, p: Any, n: int) -> float:
    if b.samples is not None:
        return (p.samples - p.origin_samples) / n
    return float(p.step - p.origin_step)
