"""One worker per process: settle what crashes left, let the scheduler prepare, then run trials
until the study has `target` finished ones.

The next job is, in this order: a trial whose worker died (continued in place from its newest
checkpoint), a trial that failed on an error and has retries left (continued as a new Optuna trial
with the same params), or a new trial from the scheduler.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import suggest, trial_hparams, warmup_hparams
from hpsearch.errors import HpsearchError, TaskError
from hpsearch.lineage import WORKERS, AttemptRow, attempt_is_stale
from hpsearch.search import asking
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.budgets import Budgets
from hpsearch.search.collect import (
    collect_garbage,
    collect_garbage_quietly,
    recover,
    settle_pending,
)
from hpsearch.search.context import RunContext
from hpsearch.search.control import StopFlag, UnusableCheckpoint
from hpsearch.search.heartbeat import Heartbeat
from hpsearch.search.jobs import Job, Outcome, Wait
from hpsearch.search.progress import StudyProgress
from hpsearch.search.ranks import Ranks
from hpsearch.search.records import PREFIX, set_study_attr, study_attr, trial_attr
from hpsearch.search.restore import Restorer
from hpsearch.search.retries import retried_numbers, retryable
from hpsearch.search.saving import Checkpointer
from hpsearch.search.scheduler import Scheduler, make_scheduler
from hpsearch.search.session import Session, check_fingerprint
from hpsearch.search.trial import TrialRunner
from hpsearch.training import Trainer

TREE_KEYS = ("generation", "parent_trial", "child")  # a retry fills its failed node's slot
_jitter = random.Random()  # idle workers' pauses only: the study's seeded RNGs stay untouched


class Worker:
    """Runs trials of one study in this process until the study has `target` finished trials."""

    def __init__(
        self,
        session: Session,
        *,
        stop: StopFlag | None = None,
        label: str = "",
        listen: tuple[str, int] | None = None,
    ) -> None:
        self.session = session
        self.stop = stop if stop is not None else StopFlag()
        self.label = label
        self.listen = listen  # where a launcher's follower ranks join (None: started here)
        self.outcomes: list[Outcome] = []
        self.presence = ""  # this worker's row among the study's workers

    def run(self, target: int) -> list[Outcome]:
        """Run trials until `target` are finished; raises Interrupted / TrialCrashed."""
        bridge.check_version()
        s = self.session
        check_fingerprint(s)
        budgets = Budgets.of(s, s.samples_per_epoch())
        checkpointer = Checkpointer(
            s.store, s.lineage, async_save=s.settings.checkpoints.async_save
        )
        heartbeat = Heartbeat(s.lineage, s.settings.trials.heartbeat_s)
        ctx = RunContext(s, checkpointer, self.stop, budgets, heartbeat, self.label)
        ctx.ranks = Ranks(s.settings, s.sizes, listen=self.listen)
        restorer = Restorer(ctx)
        scheduler = make_scheduler(ctx, restorer)
        _preflight(ctx)
        set_study_attr(s.study, "mode", scheduler.mode)
        set_study_attr(s.study, "samples_per_epoch", budgets.n)
        progress = StudyProgress(ctx, target, size=getattr(scheduler, "size", None))
        trials = TrialRunner(ctx, restorer, scheduler, progress)
        self.presence = ctx.presence = s.lineage.start_attempt(WORKERS)
        started = False
        try:  # from here on, the heartbeat thread and the presence row end with the run
            heartbeat.watch(self.presence)
            recover(s, self.presence)
            scheduler.prepare()
            started = True
            waits = 0
            while True:
                job: Job | Wait | None = self.next_job(ctx, target, scheduler) or (
                    scheduler.new_job(target)
                )
                if job is None:
                    break
                if isinstance(job, Wait):
                    self._wait(ctx, waits)
                    waits += 1
                    continue
                waits = 0
                self.outcomes.append(self.run_trial(trials, job))
                progress.finished(self.outcomes[-1])
                ctx.unpin_all()  # also when the trial could not start
                collect_garbage(s, self.presence)
        finally:
            try:
                try:
                    checkpointer.close()
                finally:
                    ctx.team.close()  # the followers leave; they die with this process anyway
            finally:
                if started:  # after a failed start the study's facts may be what failed
                    collect_garbage_quietly(s, self.presence)
                heartbeat.close()
                s.lineage.finish_attempt(self.presence)
        return self.outcomes

    def run_trial(self, trials: TrialRunner, job: Job) -> Outcome:
        return trials.run(job)

    def _wait(self, ctx: RunContext, waits: int) -> None:
        """Nothing to start until other workers' trials finish (the last nodes of a tree, a
        synchronous generation settling, a slot another worker is asking): look again soon, at
        first after 50 ms, then less often up to every 0.5 s, with jitter so that idle workers
        do not look together; meanwhile this worker's heartbeat keeps it alive. A look reads
        only the trials that changed, and the tree's plan is worked out again only if they did."""
        pause = min(0.05 * 2**waits, 0.5) * _jitter.uniform(0.75, 1.25)
        end = time.monotonic() + pause
        while True:
            ctx.check_stop()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # -- continuing what crashes left -------------------------------------------------------

    def next_job(self, ctx: RunContext, target: int, scheduler: Scheduler) -> Job | None:
        """A trial to take over or retry, if any (new trials come from the scheduler)."""
        ctx.check_stop()
        trials = ctx.session.study.get_trials(deepcopy=False)
        for t in trials:
            job = self._takeover(ctx, t, trials, scheduler)
            if job is not None:
                return job
        for t in trials:
            if t.state == TrialState.WAITING and trial_attr(t, "retry_of") is not None:
                adopt = functools.partial(self._adopt_retry, ctx, t, trials, scheduler)
                job = asking.with_lease(ctx, asking.lease_of(t), adopt)
                if job is not None:
                    return job
        retried = retried_numbers(trials)
        for t in trials:
            if retryable(t, trials, retried, ctx.settings.trials.retries) and ctx.lineage.claim(
                f"retry:{t.number}"
            ):
                return self._retry(ctx, t, trials, scheduler)
        return None

    def _takeover(
        self, ctx: RunContext, t: FrozenTrial, trials: Sequence[FrozenTrial], scheduler: Scheduler
    ) -> Job | None:
        """Continue a running trial whose worker died, in place, from its newest checkpoint."""
        if t.state != TrialState.RUNNING:
            return None
        lin, grace = ctx.lineage, ctx.settings.trials.grace_s
        current = lin.current_attempt(t.number)
        if current is None and not lin.attempts(t.number):
            # asked but never registered. Every asker registers its trial before it lets go of
            # the lease it asked under (its slot's in a tree, else the study's ask lease), so
            # under that lease the trial has its attempt by now, or its asker died in between
            # (decided by who holds the lease, not by a clock)
            def unregistered() -> Job | None:
                if lin.attempts(t.number):
                    return None  # registered while we waited for the lease
                return self._claim(ctx, t, trials, scheduler, None)

            return asking.with_lease(ctx, asking.lease_of(t), unregistered)
        if current is not None and not attempt_is_stale(current, grace_s=grace):
            return None
        return self._claim(ctx, t, trials, scheduler, current)

    def _claim(
        self,
        ctx: RunContext,
        t: FrozenTrial,
        trials: Sequence[FrozenTrial],
        scheduler: Scheduler,
        current: AttemptRow | None,
    ) -> Job | None:
        """Take `t` over from its dead attempt `current` (None: it has none running)."""
        lin = ctx.lineage
        if current is not None:  # its worker died: settle the saves it left half-marked
            pending = lin.checkpoints(trial=t.number, statuses=("pending",))
            settle_pending(ctx.session, [r for r in pending if r.attempt == current.token])
        sources, parent, no_parent = chain_start(ctx, t, trials, scheduler)
        ctx.pin([*sources[:1], parent])
        token = lin.take_over(
            t.number, current.token if current else None,
            resumed_from=sources[0] if sources else parent,
        )  # fmt: skip
        if token is None:
            return None
        now = bridge.frozen(ctx.session.study, bridge.trial_id(t))
        if now.state != TrialState.RUNNING:
            # our snapshot was old: its worker finished it meanwhile (a short trial, between
            # our look at its attempt and our claim, which then found no running attempt); the
            # claim ran nothing and is withdrawn, so each trial keeps one `done` attempt
            lin.withdraw(token)
            return None
        params = now.params
        if set(params) != set(ctx.settings.search_space):
            params = asking.resample(ctx, now)  # its worker died between ask and sampling
        hp = trial_hparams(ctx.settings, params)
        return Job(t.number, bridge.trial_id(t), hp, "takeover", token,
                   trial_attr(t, "retry_of"), sources, parent, generation_of(t),
                   no_parent=no_parent)  # fmt: skip

    def _adopt_retry(
        self,
        ctx: RunContext,
        waiting: FrozenTrial,
        trials: Sequence[FrozenTrial],
        scheduler: Scheduler,
    ) -> Job | None:
        """A retry that a worker enqueued and died before asking for (we hold the lease it was
        enqueued under, so no other worker is between the two now): ask it and continue its
        failed trial from that trial's checkpoints, as `_retry` would have. Left waiting, a
        plain `ask` would pop it as a new trial from the base."""
        failed = next((t for t in trials if t.number == trial_attr(waiting, "retry_of")), None)
        if failed is None:
            return None
        start = chain_start(ctx, failed, trials, scheduler)
        ctx.pin([*start[0][:1], start[1]])
        job = self._start_retry(ctx, bridge.trial_id(waiting), failed, start)
        if job is not None:
            ctx.say(f"trial {job.number}: the retry of trial {failed.number}, left unasked")
        return job

    def _retry(
        self, ctx: RunContext, t: FrozenTrial, trials: Sequence[FrozenTrial], scheduler: Scheduler
    ) -> Job | None:
        """Continue a trial that failed on an error as a new trial with the same params (and
        the same place in a fork tree)."""
        study = ctx.session.study
        start = chain_start(ctx, t, trials, scheduler)
        # the failed trial's checkpoints lose its protection once the retry exists: pin them
        # until the retry records where it starts
        ctx.pin([*start[0][:1], start[1]])
        attrs: dict[str, Any] = {PREFIX + "retry_of": t.number}
        attrs |= {PREFIX + k: t.user_attrs[PREFIX + k] for k in TREE_KEYS
                  if PREFIX + k in t.user_attrs}  # fmt: skip

        def ask_retry() -> Job | None:
            # under the lease the failed trial was asked under (its slot's in a tree, which the
            # retry fills): no other worker pops what we enqueue, and none takes the retry over
            # before it is sampled and registered (see `_takeover`)
            tid = bridge.enqueue(study, dict(t.params), attrs)
            return self._start_retry(ctx, tid, t, start)

        return asking.with_lease(ctx, asking.lease_of(t), ask_retry)

    def _start_retry(
        self,
        ctx: RunContext,
        tid: int,
        failed: FrozenTrial,
        start: tuple[list[str], str | None, str],
    ) -> Job | None:
        """Ask the waiting retry `tid` of `failed`, sample and register it (under the lease it
        was enqueued under); None when a process outside the lease popped it first (it runs
        it)."""
        study = ctx.session.study
        trial = asking.ask_waiting(ctx, tid)
        if trial is None:
            return None
        grid: dict[str, Any] = {
            k: failed.system_attrs[k] for k in ("grid_id", "search_space")
            if k in failed.system_attrs
        }  # fmt: skip
        bridge.copy_system_attrs(study, bridge.trial_id(trial), grid)  # the same grid point
        hp = trial_hparams(ctx.settings, suggest(trial, ctx.settings))  # the enqueued params
        sources, parent, no_parent = start
        token = ctx.lineage.start_attempt(
            trial.number, resumed_from=sources[0] if sources else parent
        )
        return Job(trial.number, bridge.trial_id(trial), hp, "retry", token, failed.number,
                   sources, parent, generation_of(failed), no_parent=no_parent)  # fmt: skip


def chain_start(
    ctx: RunContext, t: FrozenTrial, trials: Sequence[FrozenTrial], scheduler: Scheduler
) -> tuple[list[str], str | None, str]:
    """Where a trial continued by a takeover or a retry starts: the committed checkpoints of `t`
    and of the failed attempts it continues, newest first; the chain's parent (where its first
    segment started: as recorded, or, if it was cut off before recording it, as the scheduler
    places it, a tree's node at its parent's final checkpoint); and, when that parent cannot
    be had, why (the trial then fails saying so, unless a checkpoint of its own is usable)."""
    sources, recorded = chain_sources(ctx, t, trials)
    if recorded is not None:
        return sources, recorded, ""
    try:
        return sources, scheduler.parent_of(t, trials), ""
    except UnusableCheckpoint as exc:
        return sources, None, str(exc)


def generation_of(t: FrozenTrial) -> int | None:
    """A tree node's generation as recorded, if it is one (`place` reads it)."""
    g = trial_attr(t, "generation")
    return g if isinstance(g, int) and not isinstance(g, bool) else None


def chain_sources(
    ctx: RunContext, t: FrozenTrial, trials: Sequence[FrozenTrial]
) -> tuple[list[str], str | None]:
    """The committed checkpoints of `t` and of the failed attempts it continues (one chain of the
    same params), newest first, and the chain's own parent as it recorded it."""
    by_number = {x.number: x for x in trials}
    chain, cur = [t], t
    while trial_attr(cur, "retry_of") in by_number:
        cur = by_number[trial_attr(cur, "retry_of")]
        chain.append(cur)
    numbers = {x.number for x in chain}
    rows = [r for n in numbers for r in ctx.lineage.checkpoints(trial=n, statuses=("committed",))]
    rows.sort(key=lambda r: (r.step, r.created), reverse=True)
    return [r.id for r in rows], trial_attr(chain[-1], "parent_checkpoint")


def _preflight(ctx: RunContext) -> None:
    """Catch an objective metric the task does not return before any training starts."""
    s = ctx.session
    if study_attr(s.study, "preflight_ok"):
        return
    from hpsearch.training.build import inexact_on_cudnn
    from hpsearch.training.state import rng_state, set_rng_state

    saved = rng_state()
    try:
        probe = Trainer.create(
            s.task(), warmup_hparams(s.settings), seed=s.settings.seed, device=s.settings.device,
            datasets=s.datasets(), objective=ctx.metric,
        )  # fmt: skip
        metrics = probe.evaluate()
        for name in inexact_on_cudnn(probe.model):
            ctx.say(
                f"warning: {name}: an RNN with dropout between its layers on cuDNN draws its "
                "masks from cuDNN's own state, which no checkpoint holds: its resumes, forks "
                "and replays are not exact. Set torch.backends.cudnn.enabled = False in your "
                "task module (or dropout 0 there) to make them exact"
            )
    except (HpsearchError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise TaskError(
            f"{s.settings.path}: task: building or evaluating {s.settings.task} failed "
            f"before training: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        set_rng_state(saved)
    if ctx.metric not in metrics:
        raise TaskError(
            f"{s.settings.path}: objective.metric: {ctx.metric!r} is not among the metrics "
            f"that evaluate() returns ({', '.join(sorted(metrics)) or 'none'}); set "
            "objective.metric to one of them or return it from evaluate()"
        )
    set_study_attr(s.study, "preflight_ok", True)
