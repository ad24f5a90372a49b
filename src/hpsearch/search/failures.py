"""How a trial that raised ends: recorded as FAIL with its kind and reason, retried while it has
retries, and the run stopped once `trials.max_failures` trials have failed for good. Also the
accounting of a trial's own training over its attempts."""

from __future__ import annotations

import errno
import os
import time

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.errors import CheckpointWriteError, ForkError
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search import trail
from hpsearch.search.context import RunContext
from hpsearch.search.control import TrialCrashed
from hpsearch.search.hooks import TrialHooks
from hpsearch.search.jobs import Job, Outcome
from hpsearch.search.records import set_trial_attrs, trial_attr
from hpsearch.search.restore import Restorer
from hpsearch.search.retries import retried_numbers, retryable
from hpsearch.search.summary import outcome_line


class FailureHandler:
    def __init__(self, ctx: RunContext, restorer: Restorer) -> None:
        self.ctx, self.restorer = ctx, restorer
        self.count = 0  # trials of this run that failed for good on an error

    def failed(self, otrial: optuna.Trial, job: Job, start: float, exc: Exception) -> Outcome:
        """A trial raised: record it as FAIL, let the loop retry it now (up to trials.retries),
        and stop the run once trials.max_failures trials have failed for good."""
        oom = out_of_memory(exc)
        # out of memory: the same params need the same memory, so a retry fails the same way;
        # a rank lost (one of the trial's processes died: RankLost) is retried as an error is
        return self._fail(otrial, job, start, exc, "oom" if oom else "error")

    def start_failed(self, otrial: optuna.Trial, job: Job, start: float, exc: Exception) -> Outcome:
        """The trial could not start: the task's model(), optimizer() or apply_hparams raised
        (or ran out of memory) on this trial's values, or a fork could not apply them. The same
        values fail the same way, so it is not retried; the study goes on."""
        kind = "oom" if out_of_memory(exc) else "fork" if isinstance(exc, ForkError) else "start"
        return self._fail(otrial, job, start, exc, kind)

    def _fail(
        self, otrial: optuna.Trial, job: Job, start: float, exc: Exception, kind: str
    ) -> Outcome:
        ctx, lin, trials = self.ctx, self.ctx.lineage, self.ctx.settings.trials
        reason = trail.describe(exc)
        if not lin.owns(job.token):  # another worker has it now: its outcome, not ours
            ctx.say(f"trial {job.number}: {reason[:500]}; taken over by another worker")
            return Outcome(job.number, "LOST", None, job.hparams, 0, time.monotonic() - start)
        log = trail.keep(self.log_dir, job.number, job.token, kind, exc)
        set_trial_attrs(otrial, fail_kind=kind, fail_reason=reason[:2000], fail_log=log)
        ctx.exhausted |= bridge.tell(ctx.session.study, job.number, state=TrialState.FAIL)
        lin.finish_attempt(job.token, "done")
        if kind == "oom" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        all_trials = ctx.session.study.get_trials(deepcopy=False)
        mine = next(t for t in all_trials if t.number == job.number)
        if retryable(mine, all_trials, retried_numbers(all_trials), trials.retries):
            what = "retrying it from its newest checkpoint"
        else:
            self.count += 1
            what = {"oom": "out of memory: not retried", "error": "no retries left"}.get(
                kind, "not retried: the same values fail the same way"
            )
        where = f" (traceback: {log})" if log else ""
        ctx.say(f"trial {job.number}: failed: {reason[:500]}; {what}{where}")
        if self.count >= trials.max_failures:
            raise TrialCrashed(
                f"{self.count} trials failed for good in this run (trials.max_failures="
                f"{trials.max_failures}); the last, trial {job.number}: {reason[:500]}\n  fix "
                "the cause and run the same command again; `hpsearch status` lists the failures"
            ) from exc
        ft = bridge.frozen(ctx.session.study, job.trial_id)
        steps = int(trial_attr(ft, "steps_trained", 0))
        out = Outcome(job.number, "FAIL", None, dict(ft.params), steps,
                      time.monotonic() - start, reason[:200])  # fmt: skip
        ctx.say(outcome_line(out, ctx.metric))
        return out

    @property
    def log_dir(self) -> str:
        """Where each trial's failed attempts keep their tracebacks (`trail.keep`)."""
        s = self.ctx.session
        return os.path.join(s.settings.run_dir, "logs", s.study_name)

    def unstarted(
        self,
        otrial: optuna.Trial,
        job: Job,
        start: float,
        why: str,
        fallbacks: list[dict[str, str]] | None = None,
    ) -> Outcome:
        """No checkpoint the trial could start from is usable: it fails, the study goes on."""
        ctx, lin = self.ctx, self.ctx.lineage
        set_trial_attrs(
            otrial, fail_kind="checkpoint", fail_reason=why[:2000], fallbacks=fallbacks or []
        )
        if lin.owns(job.token):
            ctx.exhausted |= bridge.tell(ctx.session.study, job.number, state=TrialState.FAIL)
        lin.finish_attempt(job.token, "done")
        self.restorer.forget()
        params = dict(bridge.known(otrial).params)
        out = Outcome(job.number, "FAIL", None, params, 0, time.monotonic() - start, why[:200])
        ctx.say(outcome_line(out, ctx.metric))
        return out

    def account(self, otrial: optuna.Trial, job: Job, hooks: TrialHooks) -> int:
        """The trial's own training: the sum over its attempts (a continuation after a crash
        adds what it recomputes). Killed attempts count up to their last checkpoint."""
        lin = self.ctx.lineage
        lin.heartbeat(job.token, steps=hooks.steps, samples=hooks.samples)
        mine = lin.attempts(job.number)
        steps = sum(a.steps for a in mine)
        # every metric of every evaluation, once an attempt (not a storage write per evaluation)
        evaluations = hooks.evaluations()
        extra = {"evaluations": evaluations} if evaluations else {}
        set_trial_attrs(
            otrial, steps_trained=steps, samples_trained=sum(a.samples for a in mine), **extra
        )
        return steps


def disk_full(exc: BaseException) -> bool:
    """A save that failed, or a full disk or quota: the environment's fault, not the trial's."""
    return any(
        isinstance(e, CheckpointWriteError)
        or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        for e in trail.causes(exc)
    )


def out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", MemoryError)
    return any(isinstance(e, (MemoryError, oom)) for e in trail.causes(exc))
