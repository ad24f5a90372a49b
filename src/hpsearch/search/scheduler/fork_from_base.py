"""Fork from one base: a shared warm-up, its final checkpoint held in memory, every new trial
forked from it with its own hyperparameters."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial

from hpsearch.checkpoint.format import check_id
from hpsearch.config import warmup_hparams
from hpsearch.errors import CheckpointError
from hpsearch.lineage import WARMUP, CheckpointRow, attempt_is_stale
from hpsearch.search import asking
from hpsearch.search.context import RunContext
from hpsearch.search.control import Interrupted, LostTrial
from hpsearch.search.hooks import TrialHooks, checkpoint_on_stop, progress_bar
from hpsearch.search.jobs import Job
from hpsearch.search.records import Mode, set_study_attr, study_attr
from hpsearch.search.restore import UNUSABLE, Restorer, why
from hpsearch.search.scheduler.pins import base_pins
from hpsearch.training import Budget, Trainer


class ForkFromBase:
    mode: Mode = "fork"

    def __init__(self, ctx: RunContext, restorer: Restorer) -> None:
        self.ctx, self.restorer = ctx, restorer
        self.base_id: str | None = None

    @property
    def budget(self) -> Budget:
        return self.ctx.budgets.trial

    def place(self, job: Job) -> None:
        pass  # every trial trains the study's one budget

    def parent_of(self, t: FrozenTrial, trials: Sequence[FrozenTrial]) -> str | None:
        return self.base_id  # every trial forks from the base

    def new_job(self, target: int) -> Job | None:
        return asking.new_job(self.ctx, target, parent=self.base_id)

    def pins(self, rows: Sequence[CheckpointRow]) -> set[str]:
        return base_pins(rows, study_attr(self.ctx.session.study, "base_checkpoint"))

    # -- the warm-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Run (or continue, or wait for) the warm-up; hold the base checkpoint in memory.

        A base that cannot be restored (damaged, forged, or a study attribute that names no
        checkpoint) is set aside -- marked `unusable` in the tree, never deleted -- and the
        warm-up continues from its newest usable checkpoint, or runs again from the start: it
        is seeded, so it makes the same base, and every trial forks from the same state."""
        study, lin = self.ctx.session.study, self.ctx.lineage
        for _ in range(3):
            self._wait_or_warm_up()
            base_id = study_attr(study, "base_checkpoint")
            reason = self._hold(base_id)
            if reason is None:
                return
            self.ctx.say(
                f"warning: the base checkpoint {str(base_id)[:100]!r} cannot be used ({reason}); "
                "setting it aside and finishing the warm-up again"
            )
            if isinstance(base_id, str) and lin.get(base_id) is not None:
                with contextlib.suppress(ValueError):
                    check_id(base_id)
                    lin.set_status(base_id, "unusable")
            set_study_attr(study, "base_checkpoint", None)
        raise CheckpointError(
            "the warm-up's base checkpoint cannot be restored even after running the warm-up "
            "again: see the warnings above; is the task deterministic in what model() builds?"
        )

    def _wait_or_warm_up(self) -> None:
        lin, grace = self.ctx.lineage, self.ctx.settings.trials.grace_s
        while not study_attr(self.ctx.session.study, "base_checkpoint"):
            current = lin.current_attempt(WARMUP)
            if current is not None and not attempt_is_stale(current, grace_s=grace):
                self.ctx.check_stop()
                time.sleep(1.0)  # another worker is warming up
                continue
            token = lin.take_over(WARMUP, current.token if current else None, resumed_from=None)
            if token is None:
                continue
            if study_attr(self.ctx.session.study, "base_checkpoint"):
                # set between our look and our claim: the warm-up finished, and the claim that
                # ran nothing is withdrawn (one warm-up, one `done` attempt)
                lin.withdraw(token)
                continue
            self._warm_up(token)

    def _hold(self, base_id: Any) -> str | None:
        """Load, check and restore the base; None when it is usable, else why not."""
        try:
            self.restorer.hold(base_id)
        except UNUSABLE as exc:  # damaged, missing or unfit; the task's errors are raised
            self.base_id = None
            return why(exc)
        self.base_id = base_id
        return None

    def _warm_up(self, token: str) -> None:
        ctx, b = self.ctx, self.ctx.budgets
        lin, study = ctx.lineage, ctx.session.study
        trainer, source = self._continue_warmup()
        if trainer is None:
            hp = warmup_hparams(ctx.settings)
            trainer = self.restorer.scratch(hp, total_samples=b.warmup_samples + b.trial_samples)
        bar = progress_bar("warm-up", b.warmup, b.n)
        hooks = TrialHooks(ctx, trainer, WARMUP, token, b.warmup, bar, parent=source)
        try:
            with ctx.team.of(trainer):
                try:
                    trainer.train(
                        b.warmup, hooks=hooks, eval_every=b.eval_every,
                        checkpoint_every=b.checkpoint_every,
                    )  # fmt: skip
                    ctx.checkpointer.flush()
                except Interrupted:
                    checkpoint_on_stop(ctx, trainer, hooks)
                    lin.finish_attempt(token, "dead")
                    raise
        finally:
            hooks.close()
        base = hooks.last
        if not lin.owns(token):
            raise LostTrial("another worker took over the warm-up")
        curve = [(h["samples"] / b.n, h[ctx.metric]) for h in trainer.history]
        set_study_attr(study, "warmup_curve", curve)
        set_study_attr(study, "warmup_steps", trainer.progress.step)
        set_study_attr(study, "warmup_samples", trainer.progress.samples)
        set_study_attr(study, "base_checkpoint", base)
        lin.finish_attempt(token, "done")
        ctx.say(
            f"warm-up done: {trainer.progress.step} steps, {ctx.metric}="
            f"{trainer.history[-1][ctx.metric]:.4g}; base checkpoint {base}"
        )

    def _continue_warmup(self) -> tuple[Trainer | None, str | None]:
        """The newest usable warm-up checkpoint. A base that was committed but not yet adopted as
        the study's base (cut off in between) is the end of the warm-up: it is adopted."""
        rows = self.ctx.lineage.checkpoints(trial=WARMUP, statuses=("committed",))
        rows.sort(key=lambda r: (r.step, r.kind == "base", r.created))
        for row in reversed(rows):
            try:
                trainer = self.restorer.from_checkpoint(row.id)
            except UNUSABLE as exc:
                self.restorer.forget()
                self.ctx.say(f"warning: skipping checkpoint {row.id}: {why(exc)}")
                continue
            self.ctx.say(f"warm-up: continuing from step {trainer.progress.step}")
            return trainer, row.id
        return None, None
