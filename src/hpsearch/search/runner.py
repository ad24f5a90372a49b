"""The study run: warm-up, base checkpoint, forked trials, pruning, resume and GC.

One `Worker` runs in each process. It finishes the warm-up (or waits for the worker that runs it),
then loops: take over a trial whose worker died, continue a trial that crashed, or ask Optuna for a
new one -- until the study has the requested number of finished trials. Every trial forks from
the base checkpoint held in memory, reports each evaluation to Optuna's pruner, and checkpoints
its state so that any interruption costs at most one checkpoint interval.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import time
from collections.abc import Mapping
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.checkpoint import LoadedCheckpoint
from hpsearch.checkpoint.format import check_id
from hpsearch.config import make_sampler, suggest, trial_hparams, warmup_hparams
from hpsearch.console import Bar, say
from hpsearch.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointWriteError,
    HpsearchError,
    TaskError,
    TrainingDiverged,
)
from hpsearch.lineage import WARMUP, WORKERS, attempt_is_stale
from hpsearch.lineage.gc import Deletion, TrialFacts, apply_gc, plan_gc
from hpsearch.search.control import (
    Interrupted,
    LostTrial,
    StopFlag,
    StudyStopped,
    TrialCrashed,
    UnusableCheckpoint,
)
from hpsearch.search.hooks import TrialHooks
from hpsearch.search.plan import Job, Outcome, Plan
from hpsearch.search.saving import Checkpointer
from hpsearch.search.session import ATTR, Session, check_fingerprint
from hpsearch.search.summary import Summary, outcome_line, summarize
from hpsearch.training import Budget, Schedule, Trainer, fork
from hpsearch.training import state as training_state
from hpsearch.training.data import mix_seed
from hpsearch.training.fork import reapply_model_hparams
from hpsearch.training.loop import STATE_VERSION

RESEEDED_SAMPLERS = frozenset(
    {"TPESampler", "RandomSampler", "CmaEsSampler", "GPSampler", "NSGAIISampler", "NSGAIIISampler"}
)

# -- the worker -----------------------------------------------------------------------------------


class Worker:
    """Runs trials of one study in this process until the study has `target` finished trials."""

    def __init__(self, session: Session, *, stop: StopFlag | None = None, label: str = "") -> None:
        self.s = session
        self.settings = session.settings
        self.classic = session.classic
        self.stop = stop if stop is not None else StopFlag()
        self.label = label
        self.metric = self.settings.objective.metric
        self.ckpt = Checkpointer(
            session.store, session.lineage, async_save=self.settings.checkpoints.async_save
        )
        self.trainer: Trainer | None = None
        self.base: LoadedCheckpoint | None = None
        self.base_id: str | None = None
        self.plan: Plan | None = None
        self.outcomes: list[Outcome] = []
        self.exhausted = False  # the sampler stopped the study (a covered grid)
        self.failures = 0  # trials of this run that failed for good on an error
        self.presence = ""  # this worker's row among the study's workers

    # -- entry ------------------------------------------------------------------------------

    def run(self, target: int) -> list[Outcome]:
        """Run trials until `target` are finished; raises Interrupted / TrialCrashed."""
        check_fingerprint(self.s)
        task = self.s.task()
        self.plan = Plan.of(self.s, self.s.samples_per_epoch())
        self._preflight(task)
        self.s.set_attr("mode", "classic" if self.classic else "fork")
        self.s.set_attr("samples_per_epoch", self.plan.n)
        self.recover()
        self.presence = self.s.lineage.start_attempt(WORKERS)
        started = False
        try:
            if not self.classic:
                self.ensure_base()
            started = True
            while True:
                job = self.next_job(target)
                if job is None:
                    break
                self.outcomes.append(self.run_trial(job))
                self.collect_garbage()
        finally:
            try:
                self.ckpt.close()
            finally:
                if started:  # after a failed start the study's facts may be what failed
                    self.collect_garbage_quietly()
                self.s.lineage.finish_attempt(self.presence)
        return self.outcomes

    def _preflight(self, task: Any) -> None:
        """Catch an objective metric the task does not return before any training starts."""
        if self.s.attr("preflight_ok"):
            return
        from hpsearch.training.state import rng_state, set_rng_state

        saved = rng_state()
        try:
            probe = Trainer.create(
                task, warmup_hparams(self.settings), seed=self.settings.seed,
                device=self.settings.device, datasets=self.s.datasets(), objective=self.metric,
            )  # fmt: skip
            metrics = probe.evaluate()
        except (HpsearchError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise TaskError(
                f"{self.settings.path}: task: building or evaluating {self.settings.task} failed "
                f"before training: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            set_rng_state(saved)
        if self.metric not in metrics:
            raise TaskError(
                f"{self.settings.path}: objective.metric: {self.metric!r} is not among the metrics "
                f"that evaluate() returns ({', '.join(sorted(metrics)) or 'none'}); set "
                "objective.metric to one of them or return it from evaluate()"
            )
        self.s.set_attr("preflight_ok", True)

    # -- recovery and GC --------------------------------------------------------------------

    def recover(self) -> None:
        """Settle what a crash left: rows of saves that did or did not commit, deletions that
        did not finish, and torn files in the store."""
        lin, store = self.s.lineage, self.s.store
        grace = self.settings.trials.grace_s
        alive = {
            a.token
            for a in lin.attempts()
            if a.status == "running" and not attempt_is_stale(a, grace_s=grace)
        }
        for row in lin.checkpoints(statuses=("pending",)):
            if row.attempt in alive:
                continue  # another worker is writing it
            if store.exists(row.id):
                lin.set_status(row.id, "committed", nbytes=store.info(row.id).nbytes)
            else:
                lin.set_status(row.id, "failed")
        doomed = lin.checkpoints(statuses=("deleting",))
        apply_gc(
            [Deletion.of(r, "deletion interrupted earlier") for r in doomed], lin, store.delete
        )
        if not alive:  # no other worker may be writing: torn temporary files can go
            store.clean_leftovers()

    def trial_facts(self) -> dict[int, TrialFacts]:
        facts = {}
        trials = self.s.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(ATTR + "retry_of") for t in trials}
        for t in trials:
            facts[t.number] = TrialFacts(
                t.number, t.state.name, t.value,
                retryable=self._retryable(t, trials, retried),
                parent=t.user_attrs.get(ATTR + "parent_checkpoint"),
            )  # fmt: skip
        return facts

    def collect_garbage(self, *, dry_run: bool = False) -> list[Any]:
        lin = self.s.lineage
        plan = plan_gc(
            lin.checkpoints(),
            self.trial_facts(),
            keep_best=self.settings.checkpoints.keep_best,
            direction=self.settings.objective.direction,
            base=self.s.attr("base_checkpoint"),
            warmup_running=not self.classic and not self.s.attr("base_checkpoint"),
        )
        if not dry_run:
            apply_gc(plan, lin, self.s.store.delete)
        return plan

    def collect_garbage_quietly(self) -> None:
        try:
            self.collect_garbage()
        except Exception as exc:  # never hide the real error behind a GC failure
            print(f"warning: garbage collection failed: {exc}", file=sys.stderr)

    # -- warm-up ----------------------------------------------------------------------------

    def ensure_base(self) -> None:
        """Run (or continue, or wait for) the warm-up; hold the base checkpoint in memory.

        A base that cannot be restored (damaged, forged, or a study attribute that names no
        checkpoint) is set aside -- marked `unusable` in the tree, never deleted -- and the
        warm-up continues from its newest usable checkpoint, or runs again from the start: it
        is seeded, so it makes the same base, and every trial forks from the same state."""
        lin = self.s.lineage
        for _ in range(3):
            while not self.s.attr("base_checkpoint"):
                current = lin.current_attempt(WARMUP)
                if current is not None and not attempt_is_stale(
                    current, grace_s=self.settings.trials.grace_s
                ):
                    self._check_stop()
                    time.sleep(1.0)  # another worker is warming up
                    continue
                token = lin.take_over(WARMUP, current.token if current else None, resumed_from=None)
                if token is not None:
                    self._run_warmup(token)
            base_id = self.s.attr("base_checkpoint")
            why = self._hold_base(base_id)
            if why is None:
                return
            self._say(
                f"warning: the base checkpoint {str(base_id)[:100]!r} cannot be used ({why}); "
                "setting it aside and finishing the warm-up again"
            )
            if isinstance(base_id, str) and lin.get(base_id) is not None:
                with contextlib.suppress(ValueError):
                    check_id(base_id)
                    lin.set_status(base_id, "unusable")
            self.s.set_attr("base_checkpoint", None)
        raise CheckpointError(
            "the warm-up's base checkpoint cannot be restored even after running the warm-up "
            "again: see the warnings above; is the task deterministic in what model() builds?"
        )

    def _hold_base(self, base_id: Any) -> str | None:
        """Load, check and restore the base; None when it is usable, else why not."""
        try:
            check_id(base_id)
            loaded = self._load(base_id)
            self._check_fits(loaded)
            self.base_id, self.base = base_id, loaded
            self._from_base()  # a restore that fails shows now, not in the first trial
        except (KeyboardInterrupt, SystemExit, Interrupted):
            raise
        except Exception as exc:
            self.base_id, self.base, self.trainer = None, None, None
            return _why(exc)
        return None

    def _run_warmup(self, token: str) -> None:
        assert self.plan is not None
        task, lin = self.s.task(), self.s.lineage
        # the newest warm-up checkpoint; a base that was committed but not yet adopted as the
        # study's base (cut off in between) is the end of the warm-up: adopt it
        rows = lin.checkpoints(trial=WARMUP, statuses=("committed",))
        rows.sort(key=lambda r: (r.step, r.kind == "base", r.created))
        trainer, source = self._restore_newest([r.id for r in reversed(rows)])
        hp = warmup_hparams(self.settings)
        if trainer is None:
            sched = self.settings.schedule
            trainer = Trainer.create(
                task, hp, seed=self.settings.seed, device=self.settings.device,
                schedule=Schedule(sched.name, sched.warmup, sched.final) if sched else None,
                total_samples=self.plan.warmup_samples + self.plan.trial_samples,
                num_workers=self.settings.data.num_workers, datasets=self.s.datasets(),
                objective=self.metric,
            )  # fmt: skip
        bar = _bar("warm-up", self.plan.warmup, self.plan.n)
        hooks = TrialHooks(self, trainer, WARMUP, token, self.plan.warmup, bar, parent=source)
        try:
            trainer.train(
                self.plan.warmup, hooks=hooks, eval_every=self.plan.eval_every,
                checkpoint_every=self.plan.checkpoint_every,
            )  # fmt: skip
            self.ckpt.flush()
        except Interrupted:
            self._checkpoint_now(trainer, hooks)
            lin.finish_attempt(token, "dead")
            raise
        finally:
            bar.close()
        base = hooks.last
        if not lin.owns(token):
            raise LostTrial("another worker took over the warm-up")
        curve = [(h["samples"] / self.plan.n, h[self.metric]) for h in trainer.history]
        self.s.set_attr("warmup_curve", curve)
        self.s.set_attr("warmup_steps", trainer.progress.step)
        self.s.set_attr("warmup_samples", trainer.progress.samples)
        self.s.set_attr("base_checkpoint", base)
        lin.finish_attempt(token, "done")
        self.trainer = trainer
        self._say(
            f"warm-up done: {trainer.progress.step} steps, {self.metric}="
            f"{trainer.history[-1][self.metric]:.4g}; base checkpoint {base}"
        )

    # -- choosing the next trial ------------------------------------------------------------

    def next_job(self, target: int) -> Job | None:
        self._check_stop()
        study, lin = self.s.study, self.s.lineage
        trials = study.get_trials(deepcopy=False)
        grace = self.settings.trials.grace_s
        # 1. a trial whose worker died: continue it in place, from its newest checkpoint
        for t in trials:
            if t.state != TrialState.RUNNING:
                continue
            current = lin.current_attempt(t.number)
            if current is None:
                if not lin.attempts(t.number) and _age(t) < grace and self._others_alive():
                    continue  # just asked by another worker, not yet registered
            elif not attempt_is_stale(current, grace_s=grace):
                continue
            sources = self._sources(t.number, t.user_attrs.get(ATTR + "parent_checkpoint"))
            token = lin.take_over(
                t.number, current.token if current else None, resumed_from=_first(sources)
            )
            if token is not None:
                params = t.params
                if set(params) != set(self.settings.search_space):
                    params = self._resample(t)  # its worker died between ask and sampling
                hp = trial_hparams(self.settings, params)
                return Job(t.number, t._trial_id, hp, "takeover", token,
                           t.user_attrs.get(ATTR + "retry_of"), sources)  # fmt: skip
        # 2. a trial that crashed on an error: continue it as a new trial with the same params
        retried = {t.user_attrs.get(ATTR + "retry_of") for t in trials}
        for t in trials:
            if self._retryable(t, trials, retried) and lin.claim(f"retry:{t.number}"):
                sources = self._sources(t.number, t.user_attrs.get(ATTR + "parent_checkpoint"))
                study.enqueue_trial(
                    dict(t.params), user_attrs={ATTR + "retry_of": t.number}, skip_if_exists=False
                )
                trial = self._ask()
                for key in ("grid_id", "search_space"):  # the same grid point, for GridSampler
                    if key in t.system_attrs:
                        study._storage.set_trial_system_attr(
                            trial._trial_id, key, t.system_attrs[key]
                        )
                hp = trial_hparams(self.settings, suggest(trial, self.settings))  # fixed params
                token = lin.start_attempt(trial.number, resumed_from=_first(sources))
                return Job(trial.number, trial._trial_id, hp, "retry", token,
                           t.number, sources)  # fmt: skip
        # 3. a new trial, if the study needs more
        settled = sum(1 for t in trials if _settled(t, trials, retried, self))
        active = sum(
            1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)
        ) + sum(1 for t in trials if self._retryable(t, trials, retried))
        if settled + active >= target or self.exhausted:
            return None
        trial = self._ask()
        sampled = suggest(trial, self.settings)  # before the attempt: a registered trial has params
        token = lin.start_attempt(trial.number)
        hp = trial_hparams(self.settings, sampled)
        return Job(trial.number, trial._trial_id, hp, "new", token)

    def _resample(self, t: Any) -> dict[str, Any]:
        """Sample the params of a trial whose worker died after `ask` and before sampling, with
        the sampler seeded as `_ask` seeded it for that trial number; enqueued (fixed) params,
        as a retry has, come back unchanged."""
        study = self.s.study
        name = self.settings.sampler.name
        if name in RESEEDED_SAMPLERS:
            study.sampler = make_sampler(
                self.settings, mix_seed(self.settings.seed, t.number) % 2**31
            )
        elif type(study.sampler).__name__ != name:
            study.sampler = make_sampler(self.settings, self.settings.seed)
        params = suggest(optuna.trial.Trial(study, t._trial_id), self.settings)
        self._say(f"trial {t.number}: had no params (its worker died while sampling); sampled now")
        return params

    def _others_alive(self) -> bool:
        """Is another worker of this study alive (so a trial without an attempt yet may be
        one it has just asked for)?"""
        grace = self.settings.trials.grace_s
        return any(
            a.status == "running" and a.token != self.presence
            and not attempt_is_stale(a, grace_s=grace)
            for a in self.s.lineage.attempts(WORKERS)
        )  # fmt: skip

    def _ask(self) -> optuna.Trial:
        """Ask with a sampler seeded by (seed, trial number): a resumed study samples the same
        trials as an uninterrupted one, though the sampler object is new. Samplers that keep
        their plan in the study's storage (grid, QMC) keep one seed instead: reseeding would
        reshuffle the plan they have already half carried out."""
        study = self.s.study
        name = self.settings.sampler.name
        if name in RESEEDED_SAMPLERS:
            number = len(study.get_trials(deepcopy=False))
            seed = mix_seed(self.settings.seed, number) % 2**31
            study.sampler = make_sampler(self.settings, seed)
        elif type(study.sampler).__name__ != name:
            study.sampler = make_sampler(self.settings, self.settings.seed)
        return study.ask()

    def _tell(self, number: int, *args: Any, **kwargs: Any) -> None:
        """`study.tell` as `optimize` calls it, so a sampler may stop the study (GridSampler
        does once its grid is covered); then this worker asks for no new trial."""
        study = self.s.study
        study._thread_local.in_optimize_loop = True
        try:
            study.tell(number, *args, **kwargs)
        finally:
            study._thread_local.in_optimize_loop = False
        if getattr(study, "_stop_flag", False):
            study._stop_flag = False
            self.exhausted = True

    def _retryable(self, t: Any, trials: list[Any], retried: set[Any]) -> bool:
        if t.state != TrialState.FAIL or t.number in retried:
            return False
        if t.user_attrs.get(ATTR + "fail_kind") != "error":
            return False
        depth, by_number = 0, {x.number: x for x in trials}
        cur = t
        while cur.user_attrs.get(ATTR + "retry_of") is not None:
            depth += 1
            cur = by_number[cur.user_attrs[ATTR + "retry_of"]]
        return depth < self.settings.trials.retries

    def _sources(self, number: int, parent: str | None) -> list[str]:
        """Checkpoints a continuation of `number` may start from, newest first, then its parent."""
        rows = self.s.lineage.checkpoints(trial=number, statuses=("committed",))
        out = [r.id for r in sorted(rows, key=lambda r: (r.step, r.created), reverse=True)]
        if parent and parent not in out:
            out.append(parent)
        return out

    # -- one trial --------------------------------------------------------------------------

    def run_trial(self, job: Job) -> Outcome:
        assert self.plan is not None
        study, lin, plan = self.s.study, self.s.lineage, self.plan
        start = time.monotonic()
        otrial = optuna.trial.Trial(study, job.trial_id)
        try:
            trainer, source = self._trainer_for(job)
        except UnusableCheckpoint as exc:
            return self._fail_unstarted(otrial, job, start, f"{exc}")
        # a new trial, or one that died before its first checkpoint, starts its segment afresh
        fresh_segment = source is None if self.classic else source == self.base_id
        if fresh_segment and not self.classic:
            fork(trainer, job.hparams)
            trainer.begin_segment()
            trainer.total_samples = plan.trial_total(trainer.progress.samples, job.hparams)
        if fresh_segment:
            attrs = {
                "parent_checkpoint": None if self.classic else self.base_id,
                "fork_step": trainer.progress.step,
                "fork_samples": trainer.progress.samples,
            }
            for k, v in attrs.items():
                otrial.set_user_attr(ATTR + k, v)
        if job.kind == "retry" and not fresh_segment:
            otrial.set_user_attr(ATTR + "parent_checkpoint", source)
            otrial.set_user_attr(ATTR + "fork_step", trainer.progress.step)
            otrial.set_user_attr(ATTR + "fork_samples", trainer.progress.samples)
            self._report_history(otrial, trainer)
        if job.kind != "new":
            what = "continued" if job.kind == "takeover" else f"retry of trial {job.retry_of}"
            where = f"step {trainer.progress.step}" + (f" ({source})" if source else "")
            self._say(f"trial {job.number}: {what} from {where}")
        budget = plan.classic_budget() if self.classic else plan.trial
        bar = _bar(f"trial {job.number}", budget, plan.n)
        hooks = TrialHooks(self, trainer, job.number, job.token, budget, bar, parent=source,
                       otrial=otrial)  # fmt: skip
        state, value, note = "COMPLETE", None, ""
        try:
            metrics = trainer.train(
                budget, hooks=hooks, eval_every=plan.eval_every,
                checkpoint_every=plan.checkpoint_every,
            )  # fmt: skip
            self.ckpt.flush()
            value = float(metrics[self.metric])  # type: ignore[index]
        except optuna.TrialPruned:
            state, value = "PRUNED", hooks.last_value
            note = f"pruned at epoch {trainer.epoch:.3g}"
            otrial.set_user_attr(ATTR + "pruned_at", trainer.epoch)
        except TrainingDiverged as exc:
            state, note = "FAIL", f"diverged: {exc}"
            otrial.set_user_attr(ATTR + "fail_kind", "diverged")
            otrial.set_user_attr(ATTR + "fail_reason", str(exc))
        except Interrupted:
            self._checkpoint_now(trainer, hooks)
            self._account(otrial, job, hooks)
            lin.finish_attempt(job.token, "dead")
            raise
        except LostTrial as exc:
            self._say(f"trial {job.number}: {exc}; leaving it to that worker")
            self.trainer = None
            return Outcome(job.number, "LOST", None, job.hparams, 0, time.monotonic() - start)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            self.trainer = None  # its state is suspect: rebuild from a checkpoint next time
            with contextlib.suppress(Exception):  # the trial's error is the one to report
                self.ckpt.flush()
            self._account(otrial, job, hooks)
            if _disk_full(exc):
                lin.finish_attempt(job.token, "dead")  # resumable, as after a kill
                raise StudyStopped(
                    f"trial {job.number}: {type(exc).__name__}: {exc}\n  not the trial's fault, "
                    "so it is left to continue from its newest checkpoint with its retries "
                    "untouched; free disk space (or fix checkpoints.dir) and run the same "
                    "command again"
                ) from exc
            return self._fail(otrial, job, start, exc)
        finally:
            bar.close()
        if not lin.owns(job.token):
            self._say(f"trial {job.number}: taken over by another worker; not committing")
            return Outcome(job.number, "LOST", None, job.hparams, 0, time.monotonic() - start)
        steps = self._account(otrial, job, hooks)
        if state == "COMPLETE":
            otrial.set_user_attr(ATTR + "final_checkpoint", hooks.last)
            self._tell(job.number, value)
        elif state == "PRUNED":
            self._tell(job.number, state=TrialState.PRUNED)
        else:
            self._tell(job.number, state=TrialState.FAIL)
        lin.finish_attempt(job.token, "done")
        params = dict(study._storage.get_trial(job.trial_id).params)
        out = Outcome(job.number, state, value, params, steps,
                      time.monotonic() - start, note)  # fmt: skip
        self._say(outcome_line(out, self.metric))
        return out

    def _fail(self, otrial: optuna.Trial, job: Job, start: float, exc: Exception) -> Outcome:
        """A trial raised: record it as FAIL, let the loop retry it now (up to trials.retries),
        and stop the run once trials.max_failures trials have failed for good."""
        lin, trials = self.s.lineage, self.settings.trials
        oom = _out_of_memory(exc)
        reason = f"{type(exc).__name__}: {exc}"
        if not lin.owns(job.token):  # another worker has it now: its outcome, not ours
            self._say(f"trial {job.number}: {reason[:500]}; taken over by another worker")
            return Outcome(job.number, "LOST", None, job.hparams, 0, time.monotonic() - start)
        # out of memory: the same params need the same memory, so a retry fails the same way
        otrial.set_user_attr(ATTR + "fail_kind", "oom" if oom else "error")
        otrial.set_user_attr(ATTR + "fail_reason", reason[:2000])
        self._tell(job.number, state=TrialState.FAIL)
        lin.finish_attempt(job.token, "done")
        if oom and torch.cuda.is_available():
            torch.cuda.empty_cache()
        all_trials = self.s.study.get_trials(deepcopy=False)
        mine = next(t for t in all_trials if t.number == job.number)
        retried = {t.user_attrs.get(ATTR + "retry_of") for t in all_trials}
        again = self._retryable(mine, all_trials, retried)
        if again:
            what = "retrying it from its newest checkpoint"
        else:
            self.failures += 1
            what = "out of memory: not retried" if oom else "no retries left"
        self._say(f"trial {job.number}: failed: {reason[:500]}; {what}")
        if self.failures >= trials.max_failures:
            raise TrialCrashed(
                f"{self.failures} trials failed for good in this run (trials.max_failures="
                f"{trials.max_failures}); the last, trial {job.number}: {reason[:500]}\n  fix "
                "the cause and run the same command again; `hpsearch status` lists the failures"
            ) from exc
        steps = int(otrial.study._storage.get_trial(job.trial_id).user_attrs.get(
            ATTR + "steps_trained", 0))  # fmt: skip
        params = dict(self.s.study._storage.get_trial(job.trial_id).params)
        out = Outcome(job.number, "FAIL", None, params, steps,
                      time.monotonic() - start, reason[:200])  # fmt: skip
        self._say(outcome_line(out, self.metric))
        return out

    def _fail_unstarted(self, otrial: optuna.Trial, job: Job, start: float, why: str) -> Outcome:
        """No checkpoint the trial could start from is usable: it fails, the study goes on."""
        lin = self.s.lineage
        otrial.set_user_attr(ATTR + "fail_kind", "checkpoint")
        otrial.set_user_attr(ATTR + "fail_reason", why[:2000])
        if lin.owns(job.token):
            self._tell(job.number, state=TrialState.FAIL)
        lin.finish_attempt(job.token, "done")
        self.trainer = None
        params = dict(self.s.study._storage.get_trial(job.trial_id).params)
        out = Outcome(job.number, "FAIL", None, params, 0,
                      time.monotonic() - start, why[:200])  # fmt: skip
        self._say(outcome_line(out, self.metric))
        return out

    def _trainer_for(self, job: Job) -> tuple[Trainer, str | None]:
        """A trainer holding the state the job starts from, and that state's checkpoint id."""
        task = self.s.task()
        assert self.plan is not None
        if self.classic and not job.sources:
            sched = self.settings.schedule
            hp = job.hparams
            budget = self.plan.classic_budget()
            total = (
                budget.samples
                if budget.samples is not None
                else budget.steps * int(hp["batch_size"])
            )
            return Trainer.create(
                task, hp, seed=self.settings.seed, device=self.settings.device,
                schedule=Schedule(sched.name, sched.warmup, sched.final) if sched else None,
                total_samples=total, num_workers=self.settings.data.num_workers,
                datasets=self.s.datasets(), objective=self.metric,
            ), None  # fmt: skip
        sources = job.sources if job.kind != "new" else [self.base_id]
        if not self.classic and self.base_id not in sources:
            sources = [*sources, self.base_id]  # cut off before its first checkpoint: fork again
        for ckpt_id in sources:
            try:
                if ckpt_id == self.base_id and self.base is not None:
                    return self._from_base(), ckpt_id
                loaded = self._load(ckpt_id)
                self._check_fits(loaded)
                return self._adopt(loaded), ckpt_id
            except (KeyboardInterrupt, SystemExit, Interrupted):
                raise
            except Exception as exc:  # any failure to restore: that source is unusable
                self.trainer = None  # a copy that failed half-way leaves it half-loaded
                self._say(
                    f"warning: trial {job.number}: checkpoint {str(ckpt_id)[:100]} cannot be "
                    f"used ({_why(exc)}); trying the next source"
                )
        if self.classic:
            return self._trainer_for(Job(**{**job.__dict__, "sources": []}))
        raise UnusableCheckpoint(
            f"no usable checkpoint among {', '.join(str(x)[:100] for x in sources)}"
        )

    def _from_base(self) -> Trainer:
        assert self.base is not None
        if self.trainer is not None:
            self._copy_into(self.trainer, self.base)
        else:
            tensors = {
                g: {k: v.clone() for k, v in d.items()} for g, d in self.base.tensors.items()
            }
            self.trainer = self._restore(tensors, self.base.state)
        return self.trainer

    def _adopt(self, loaded: LoadedCheckpoint) -> Trainer:
        if self.trainer is not None:
            self._copy_into(self.trainer, loaded)
        else:
            self.trainer = self._restore(loaded.tensors, loaded.state)
        return self.trainer

    def _copy_into(self, trainer: Trainer, loaded: LoadedCheckpoint) -> None:
        old = dict(trainer.hparams)
        trainer.load(loaded.tensors, loaded.state)
        reapply_model_hparams(trainer, old, loaded.state["hparams"])

    def _restore(self, tensors: Any, state: Mapping[str, Any]) -> Trainer:
        return Trainer.restore(
            self.s.task(), tensors, state, device=self.settings.device,
            num_workers=self.settings.data.num_workers, datasets=self.s.datasets(),
        )  # fmt: skip

    def _restore_newest(self, ids: list[str]) -> tuple[Trainer | None, str | None]:
        for ckpt_id in ids:
            try:
                loaded = self._load(ckpt_id)
                self._check_fits(loaded)
                trainer = self._restore(loaded.tensors, loaded.state)
            except (KeyboardInterrupt, SystemExit, Interrupted):
                raise
            except Exception as exc:
                self._say(f"warning: skipping checkpoint {ckpt_id}: {_why(exc)}")
                continue
            self._say(f"warm-up: continuing from step {trainer.progress.step}")
            return trainer, ckpt_id
        return None, None

    def _check_fits(self, loaded: LoadedCheckpoint) -> None:
        """What a checkpoint that passed its hashes must still satisfy before anything trains
        on it: a state version this hpsearch reads, weights of the names, shapes and dtypes
        the task's model has, optimizer param groups of the types the task's optimizer uses,
        and finite values (a non-finite weight in a checkpoint is damage, not divergence)."""
        state = loaded.state
        version = state.get("version", 0)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise CheckpointMismatch(
                f"training state version {version!r}; this hpsearch reads up to {STATE_VERSION}"
            )
        hp = state["hparams"]
        if not isinstance(hp, dict):
            raise CheckpointMismatch(f"hparams are a {type(hp).__name__}, not a mapping")
        if self.trainer is not None:
            # compare with the live trainer: calling the task's model() and optimizer() again
            # would replace what a task keeps of them (its optimizer, say) by meta copies
            model, optimizer = self.trainer.model, self.trainer.optimizer
        else:  # a restore follows, and builds the real ones last
            task = self.s.task()
            with torch.device("meta"):
                model = task.model(dict(hp))
            optimizer = task.optimizer(model, dict(hp))
        weights = training_state.expand_aliases(loaded.tensors["model"], state.get("model_aliases"))
        training_state.check_model_keys(model, weights)  # names, shapes and dtypes
        _check_groups(state["optimizer"], optimizer)
        for group, tensors in loaded.tensors.items():
            for k, t in tensors.items():
                # the sum is finite only if every element is (NaN and inf propagate), and it
                # costs a fifth of isfinite(); only a sum that overflowed needs the exact check
                if (
                    t.is_floating_point()
                    and not bool(torch.isfinite(t.sum()))
                    and not bool(torch.isfinite(t).all())
                ):
                    raise CheckpointCorrupt(f"{group} tensor {k} holds non-finite values")

    def _load(self, ckpt_id: str) -> LoadedCheckpoint:
        return self.s.store.load(ckpt_id)

    def _report_history(self, otrial: optuna.Trial, trainer: Trainer) -> None:
        """A retry is a new Optuna trial: give it the evaluations its failed attempt reported."""
        done = set(self.s.study._storage.get_trial(otrial._trial_id).intermediate_values)
        origin = trainer.progress.origin_samples
        for h in trainer.history:
            if h["samples"] > origin and h["index"] not in done:
                otrial.report(h[self.metric], h["index"])

    def _account(self, otrial: optuna.Trial, job: Job, hooks: TrialHooks) -> int:
        """The trial's own training: the sum over its attempts (a continuation after a crash
        adds what it recomputes). Killed attempts count up to their last checkpoint."""
        lin = self.s.lineage
        lin.heartbeat(job.token, steps=hooks.steps, samples=hooks.samples)
        mine = lin.attempts(job.number)
        steps = sum(a.steps for a in mine)
        otrial.set_user_attr(ATTR + "steps_trained", steps)
        otrial.set_user_attr(ATTR + "samples_trained", sum(a.samples for a in mine))
        return steps

    def _checkpoint_now(self, trainer: Trainer, hooks: TrialHooks) -> None:
        """On a clean stop: save the current state unless it is saved already."""
        try:
            if trainer.saved_step != trainer.progress.step:
                hooks.stopping = True
                trainer.checkpoint(hooks)
            self.ckpt.flush()
        except CheckpointError as exc:
            print(f"warning: could not checkpoint on stop: {exc}", file=sys.stderr)

    def _check_stop(self) -> None:
        if self.stop:
            raise Interrupted(f"stopped by signal {self.stop.signal}")

    def _say(self, msg: str) -> None:
        say(f"{self.label}{msg}")


# -- the whole run ----


def run_study(
    path: str,
    *,
    trials: int | None = None,
    storage: str | None = None,
    classic: bool = False,
    label: str = "",
) -> Summary:
    """`hpsearch run`: create or continue the study until it has `trials` finished trials."""
    session = Session.open(path, storage=storage, classic=classic)
    try:
        target = trials if trials is not None else session.settings.trials.n
        start = time.monotonic()
        stop = StopFlag()
        with stop.installed():
            Worker(session, stop=stop, label=label).run(target)
        return summarize(session, time.monotonic() - start)
    finally:
        session.close()


# -- helpers --------------------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    """One line on why a checkpoint cannot be used."""
    if isinstance(exc, MemoryError):
        return "corrupt: reading it ran out of memory"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _disk_full(exc: BaseException) -> bool:
    """A save that failed, or a full disk or quota: the environment's fault, not the trial's."""
    return any(
        isinstance(e, CheckpointWriteError)
        or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        for e in _causes(exc)
    )


def _out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", MemoryError)
    return any(isinstance(e, (MemoryError, oom)) for e in _causes(exc))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if isinstance(value, torch.Tensor) or (isinstance(value, dict) and "__tensor__" in value):
        return "tensor"
    return type(value).__name__


def _check_groups(meta: Any, optimizer: torch.optim.Optimizer) -> None:
    """The checkpoint's optimizer param groups against those the task's optimizer builds: the
    same count, parameter counts, and for every setting a value of the same kind (a string
    learning rate would only fail later, in the middle of a trial)."""
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    fresh = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointMismatch("the optimizer's param groups are not a list of mappings")
    if len(groups) != len(fresh):
        raise CheckpointMismatch(
            f"{len(groups)} optimizer param groups, the task's optimizer has {len(fresh)}"
        )
    for i, (saved, now) in enumerate(zip(groups, fresh, strict=True)):
        params = saved.get("params")
        if not isinstance(params, list) or len(params) != len(now["params"]):
            raise CheckpointMismatch(f"optimizer param group {i}: its parameter list does not fit")
        for key, value in now.items():
            if key == "params" or value is None:
                continue
            if key not in saved:
                raise CheckpointMismatch(f"optimizer param group {i} lacks {key!r}")
            if saved[key] is not None and _kind(saved[key]) != _kind(value):
                raise CheckpointMismatch(
                    f"optimizer param group {i}: {key} is a {_kind(saved[key])}, the task's "
                    f"optimizer uses a {_kind(value)}"
                )


def _first(items: list[str]) -> str | None:
    return items[0] if items else None


def _age(t: Any) -> float:
    if t.datetime_start is None:
        return 0.0
    return time.time() - t.datetime_start.timestamp()


def _settled(t: Any, trials: list[Any], retried: set[Any], worker: Worker) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state == TrialState.FAIL:
        # a failed attempt that was continued counts through its continuation
        return t.number not in retried and not worker._retryable(t, trials, retried)
    return False


def _bar(label: str, b: Budget, n: int) -> Bar:
    if b.samples is not None:
        return Bar(label, b.samples / n, unit=" epochs")
    return Bar(label, float(b.steps or 0), unit=" steps")
