"""Running one trial: find the state it starts from, train it with reports and checkpoints, and
tell Optuna how it ended."""

from __future__ import annotations

import contextlib
import time

import optuna
import torch
from optuna.trial import TrialState

from hpsearch import failpoints
from hpsearch.errors import RankSetupError, TrainingDiverged
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.budgets import segment_end, until
from hpsearch.search.context import RunContext
from hpsearch.search.control import Interrupted, LostTrial, StudyStopped, UnusableCheckpoint
from hpsearch.search.failures import FailureHandler, disk_full
from hpsearch.search.hooks import TrialHooks, checkpoint_on_stop, progress_bar
from hpsearch.search.jobs import Job, Outcome, OutcomeState
from hpsearch.search.progress import StudyProgress
from hpsearch.search.records import set_trial_attrs
from hpsearch.search.restore import PASS_THROUGH, UNUSABLE, Restorer, why
from hpsearch.search.scheduler import Scheduler, strategy
from hpsearch.search.summary import outcome_line
from hpsearch.training import Budget, Progress, Schedule, Trainer, fork


class TrialRunner:
    def __init__(
        self,
        ctx: RunContext,
        restorer: Restorer,
        scheduler: Scheduler,
        progress: StudyProgress | None = None,
    ) -> None:
        self.ctx, self.restorer, self.scheduler = ctx, restorer, scheduler
        self.progress = progress
        self.failures = FailureHandler(ctx, restorer)
        self.restarts = strategy(ctx.session).restarts

    def run(self, job: Job) -> Outcome:
        start = time.monotonic()
        self.scheduler.place(job)
        otrial = job.handle
        if otrial is None:
            otrial = bridge.handle(self.ctx.session.study, job.trial_id)
        self.fallbacks: list[dict[str, str]] = []
        try:
            trainer, source, fresh = self.start(job)
        except UnusableCheckpoint as exc:
            return self.failures.unstarted(otrial, job, start, f"{exc}", self.fallbacks)
        except PASS_THROUGH:
            raise
        except Exception as exc:  # the task's model(), optimizer(), apply_hparams, OOM, a bug
            self.restorer.forget()  # a half-built or half-forked trainer is no state to reuse
            return self.failures.start_failed(otrial, job, start, exc)
        failpoints.passed("trial.starting")
        self._record_start(otrial, job, trainer, source, fresh)
        self.ctx.unpin_all()  # the tree keeps what the trial started from now
        budget = self._budget(job, trainer)
        b = self.ctx.budgets
        label = self.progress.label(job.number) if self.progress else f"trial {job.number}"
        bar = progress_bar(self.ctx.label + label, budget, b.n)
        hooks = TrialHooks(self.ctx, trainer, job.number, job.token, budget, bar, parent=source,
                           otrial=otrial)  # fmt: skip
        hooks.step_offset = self._step_offset(job, trainer)
        team = contextlib.ExitStack()  # the trial's other ranks, if it has several
        try:
            team.enter_context(self.ctx.team.of(trainer))
            state, value, note = self._train(otrial, trainer, hooks)
            if state == "COMPLETE" and job.probe and value is not None:
                self._probe(otrial, job, hooks)
        except Interrupted:
            checkpoint_on_stop(self.ctx, trainer, hooks)
            self.failures.account(otrial, job, hooks)
            self.ctx.lineage.finish_attempt(job.token, "dead")
            raise
        except RankSetupError:
            # the ranks could not start (a follower's import failed, none joined): not the
            # trial's fault, so no retry is spent on it; it continues when the run is started
            # again, as after a kill
            self.ctx.lineage.finish_attempt(job.token, "dead")
            raise
        except LostTrial as exc:
            self.ctx.say(f"trial {job.number}: {exc}; leaving it to that worker")
            self.restorer.forget()
            return Outcome(job.number, "LOST", None, job.hparams, 0, time.monotonic() - start)
        except PASS_THROUGH:
            raise
        except Exception as exc:
            return self._crashed(otrial, job, hooks, start, exc)
        finally:
            team.close()
            hooks.close()
        return self._finish(otrial, job, hooks, start, state, value, note)

    # -- where it starts --------------------------------------------------------------------

    def start(self, job: Job) -> tuple[Trainer, str | None, bool]:
        """The trainer holding the state the job starts from, that state's checkpoint, and
        whether the trial's own segment starts there (from its parent, or from scratch)."""
        for ckpt_id in job.sources:  # its own checkpoints: continue where it was cut off
            trainer = self._try(job, ckpt_id)
            if trainer is not None:
                return trainer, ckpt_id, False
        parent = job.parent
        if job.no_parent:
            raise UnusableCheckpoint(job.no_parent)
        if parent is None:
            if job.generation:  # a tree's child starts at its parent, never from scratch
                raise UnusableCheckpoint(
                    f"a generation-{job.generation} node of the fork tree, and its parent's "
                    "final checkpoint is not known"
                )
            return self._scratch(job), None, True
        trainer = self._try(job, parent)
        if trainer is None:
            if self.restarts:  # a classic trial can always start over
                return self._scratch(job), None, True
            tried = [*job.sources, parent]
            raise UnusableCheckpoint(
                f"no usable checkpoint among {', '.join(str(x)[:100] for x in tried)}"
            )
        fork(trainer, job.hparams)
        trainer.begin_segment()
        trainer.total_samples = job.total or segment_end(
            self.scheduler.budget, trainer.progress.samples, job.hparams
        )
        return trainer, parent, True

    def _step_offset(self, job: Job, trainer: Trainer) -> int:
        """A tree's node reports its evaluations at their index since scratch (its segment's
        start in evaluation intervals, plus its own index); other trials from their start."""
        if job.until is None:
            return 0
        every, p = self.ctx.budgets.eval_every, trainer.progress
        if every.samples is not None:
            return p.origin_samples // every.samples
        return p.origin_step // int(every.steps or 1)

    def _budget(self, job: Job, trainer: Trainer) -> Budget:
        """The job's own training from its segment's start: to its rung for a tree's node."""
        if job.until is None:
            return self.scheduler.budget
        return until(job.until, trainer.progress)

    def _try(self, job: Job, ckpt_id: str) -> Trainer | None:
        """The trainer holding checkpoint `ckpt_id`, or None when that checkpoint is damaged,
        missing or does not fit the task: a fallback, said and recorded on the trial. Anything
        else that fails on the way (the task's code, a bug) is raised as what it is."""
        try:
            return self.restorer.from_checkpoint(ckpt_id)
        except UNUSABLE as exc:
            self.restorer.forget()  # a copy that failed half-way leaves it half-loaded
            self.fallbacks.append({"checkpoint": str(ckpt_id)[:100], "why": why(exc)})
            self.ctx.say(
                f"warning: trial {job.number}: checkpoint {str(ckpt_id)[:100]} cannot be "
                f"used ({why(exc)}); trying the next source"
            )
            return None

    def _scratch(self, job: Job) -> Trainer:
        end = job.total or segment_end(self.scheduler.budget, 0, job.hparams)
        return self.restorer.scratch(job.hparams, total_samples=end)

    def _record_start(
        self, otrial: optuna.Trial, job: Job, trainer: Trainer, source: str | None, fresh: bool
    ) -> None:
        p = trainer.progress
        said: dict[str, object] = {"threads": torch.get_num_threads()}  # replay uses as many
        if self.fallbacks:
            said["fallbacks"] = self.fallbacks
        if fresh or job.kind == "retry":
            # a retry that continues its failed attempt's checkpoint starts its record there
            said |= {"parent_checkpoint": source, "fork_step": p.step, "fork_samples": p.samples}
        set_trial_attrs(otrial, **said)
        if job.kind == "retry" and not fresh:
            self._report_history(otrial, job, trainer)
        if job.kind != "new":
            what = "continued" if job.kind == "takeover" else f"retry of trial {job.retry_of}"
            where = f"step {p.step}" + (f" ({source})" if source else "")
            self.ctx.say(f"trial {job.number}: {what} from {where}")

    def _report_history(self, otrial: optuna.Trial, job: Job, trainer: Trainer) -> None:
        """A retry is a new Optuna trial: give it the evaluations its failed attempt reported."""
        done = set(bridge.known(otrial).intermediate_values)
        origin, offset = trainer.progress.origin_samples, self._step_offset(job, trainer)
        for h in trainer.history:
            if h["samples"] > origin and h["index"] + offset not in done:
                otrial.report(h[self.ctx.metric], h["index"] + offset)

    # -- training and its end ---------------------------------------------------------------

    def _train(
        self, otrial: optuna.Trial, trainer: Trainer, hooks: TrialHooks
    ) -> tuple[OutcomeState, float | None, str]:
        b = self.ctx.budgets
        try:
            metrics = trainer.train(
                hooks.budget, hooks=hooks, eval_every=b.eval_every,
                checkpoint_every=b.checkpoint_every,
            )  # fmt: skip
            self.ctx.checkpointer.flush()
            return "COMPLETE", float(metrics[self.ctx.metric]), ""
        except optuna.TrialPruned:
            set_trial_attrs(otrial, pruned_at=trainer.epoch)
            return "PRUNED", hooks.last_value, f"pruned at epoch {trainer.epoch:.3g}"
        except TrainingDiverged as exc:
            set_trial_attrs(otrial, fail_kind="diverged", fail_reason=str(exc))
            return "FAIL", None, f"diverged: {exc}"

    def _probe(self, otrial: optuna.Trial, job: Job, hooks: TrialHooks) -> None:
        """Rank a tree's node on a cooldown probe: a throwaway branch from its final state whose
        LR decays to the schedule's final value over `job.probe` samples, as its run will at
        the end. Nothing of the branch is saved; the node's children fork from its final
        checkpoint, taken before the probe. Its training counts in the node's steps and
        samples (it is compute the search spent); its evaluation is not one of the node's: the
        node's value stays its model's (what its final checkpoint holds), and the probe's
        objective is recorded as `probe_value`, which the tree ranks survivors on."""
        trainer = hooks.trainer
        sched = trainer.schedule
        if sched is None:
            return
        before, history = Progress(**vars(trainer.progress)), list(trainer.history)
        end = before.samples + job.probe
        warm = min(sched.warmup * (trainer.total_samples or end) / end, 1.0 - job.probe / end)
        trainer.schedule = Schedule("wsd", warm, sched.final, job.probe / end)
        trainer.total_samples = end
        trainer.begin_segment()
        try:
            metrics = trainer.train(Budget(samples=job.probe))
        finally:
            self.restorer.forget()  # its state is the probe's now: rebuild from a checkpoint
            hooks.steps += trainer.progress.step - before.step
            hooks.samples += trainer.progress.samples - before.samples
            trainer.progress, trainer.history = before, history  # the node's own record
        set_trial_attrs(otrial, probe_value=float(metrics[self.ctx.metric]))

    def _crashed(
        self, otrial: optuna.Trial, job: Job, hooks: TrialHooks, start: float, exc: Exception
    ) -> Outcome:
        self.restorer.forget()  # its state is suspect: rebuild from a checkpoint next time
        with contextlib.suppress(Exception):  # the trial's error is the one to report
            self.ctx.checkpointer.flush()
        self.failures.account(otrial, job, hooks)
        if disk_full(exc):
            self.ctx.lineage.finish_attempt(job.token, "dead")  # resumable, as after a kill
            raise StudyStopped(
                f"trial {job.number}: {type(exc).__name__}: {exc}\n  not the trial's fault, "
                "so it is left to continue from its newest checkpoint with its retries "
                "untouched; free disk space (or fix checkpoints.dir) and run the same "
                "command again"
            ) from exc
        return self.failures.failed(otrial, job, start, exc)

    def _finish(
        self, otrial: optuna.Trial, job: Job, hooks: TrialHooks, start: float,
        state: OutcomeState, value: float | None, note: str,
    ) -> Outcome:  # fmt: skip
        lin, study = self.ctx.lineage, self.ctx.session.study
        if not lin.owns(job.token):
            self.ctx.say(f"trial {job.number}: taken over by another worker; not committing")
            return Outcome(job.number, "LOST", None, job.hparams, 0, time.monotonic() - start)
        steps = self.failures.account(otrial, job, hooks)
        if state == "COMPLETE":
            set_trial_attrs(otrial, final_checkpoint=hooks.last)
            self.ctx.exhausted |= bridge.tell(study, job.number, value)
        elif state == "PRUNED":
            self.ctx.exhausted |= bridge.tell(study, job.number, state=TrialState.PRUNED)
        else:
            self.ctx.exhausted |= bridge.tell(study, job.number, state=TrialState.FAIL)
        lin.finish_attempt(job.token, "done")
        params = dict(bridge.known(otrial).params)
        out = Outcome(job.number, state, value, params, steps, time.monotonic() - start, note)
        self.ctx.say(outcome_line(out, self.ctx.metric))
        return out
