"""Asking Optuna for trials so that a resumed study samples what an uninterrupted one would."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import invalid_values, make_sampler, suggest, trial_hparams
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.context import RunContext
from hpsearch.search.jobs import Job
from hpsearch.search.records import NEVER_RAN, PREFIX, trial_attr
from hpsearch.search.retries import retried_numbers, retryable, settled
from hpsearch.search.spend import budget_left
from hpsearch.training.data import mix_seed


def ask(ctx: RunContext) -> optuna.Trial:
    """Ask with a sampler seeded by (seed, trial number): a resumed study samples the same trials
    as an uninterrupted one, though the sampler object is new, and two workers asking at once
    never share a seed. The number is the trial's own, known once `ask` created it: the trial is
    then opened again under the reseeded sampler, which redoes the relative sampling that `ask`
    did (for CMA-ES, GP); independent sampling happens at `suggest`, after this. Samplers that
    keep their plan in the study's storage (grid, QMC) keep one seed instead: reseeding would
    reshuffle the plan they have already half carried out."""
    study = ctx.session.study
    if not _reseeded(ctx):
        _seed_sampler(ctx, None)
        return study.ask()
    trial = study.ask()
    _seed_sampler(ctx, trial.number)
    return bridge.handle(study, bridge.trial_id(trial))


def _reseeded(ctx: RunContext) -> bool:
    return ctx.settings.sampler.name in bridge.RESEEDED_SAMPLERS


def _seed_sampler(ctx: RunContext, number: int | None) -> None:
    """The study's sampler for trial `number`: one seeded by (seed, number) for the samplers
    `ask` reseeds (`number` must then be given), else one sampler with the study's seed, made
    once."""
    study, settings = ctx.session.study, ctx.settings
    if _reseeded(ctx):
        assert number is not None
        old = study.sampler
        study.sampler = make_sampler(settings, mix_seed(settings.seed, number) % 2**31)
        bridge.carry_caches(old, study.sampler)
    elif type(study.sampler).__name__ != settings.sampler.name:
        study.sampler = make_sampler(settings, settings.seed)


def ask_waiting(ctx: RunContext, tid: int) -> optuna.Trial | None:
    """`ask` for the waiting trial `tid` (one this worker enqueued, or a tree's node left
    enqueued by a dead worker), seeded as `ask` seeds it; None if another process popped it.
    Knowing the number first, the sampler is reseeded before the trial is opened: one read of
    the trial, where `ask` reads it twice."""
    study = ctx.session.study
    _seed_sampler(ctx, bridge.trial_number(study, tid) if _reseeded(ctx) else None)
    return bridge.ask_waiting(study, tid)


def resample(ctx: RunContext, t: FrozenTrial) -> dict[str, Any]:
    """Sample the params of a trial whose worker died after `ask` and before sampling, with the
    sampler seeded as `ask` seeded it for that trial number; enqueued (fixed) params, as a retry
    has, come back unchanged."""
    study = ctx.session.study
    _seed_sampler(ctx, t.number)
    params = suggest(bridge.handle(study, bridge.trial_id(t)), ctx.settings)
    ctx.say(f"trial {t.number}: had no params (its worker died while sampling); sampled now")
    return params


def valid_waiting(ctx: RunContext, waiting: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Of trials enqueued by hand (Optuna's `enqueue_trial`), those whose values the search
    space can hold; each other one ends FAIL (`fail_kind` invalid, the reason said) without
    running, before any sampler or task sees its values."""
    ok = []
    for t in waiting:
        wrong = invalid_values(ctx.settings.search_space, t.system_attrs.get("fixed_params") or {})
        if not wrong:
            ok.append(t)
            continue
        reason = "enqueued with values its search space cannot hold: " + "; ".join(wrong)
        attrs = {PREFIX + "fail_kind": "invalid", PREFIX + "fail_reason": reason}
        bridge.fail_waiting(ctx.session.study, bridge.trial_id(t), attrs)
        ctx.say(f"trial {t.number}: not run: {reason}")
    return ok


def wanted(ctx: RunContext, target: int) -> bool:
    """Does the study need another new trial to reach `target` finished ones (and has it budget
    left for one)? Hand-enqueued trials that `ask` would pop next are checked first
    (`valid_waiting`)."""
    if ctx.exhausted:
        return False
    trials = ctx.session.study.get_trials(deepcopy=False)
    enqueued = [t for t in trials if t.state == TrialState.WAITING
                and not any(k.startswith(PREFIX) for k in t.user_attrs)]  # fmt: skip
    if len(valid_waiting(ctx, enqueued)) < len(enqueued):
        trials = ctx.session.study.get_trials(deepcopy=False)
    if not budget_left(ctx.session, ctx.budgets, trials):
        return False
    retried, retries = retried_numbers(trials), ctx.settings.trials.retries
    done = sum(1 for t in trials if settled(t, trials, retried, retries)
               and trial_attr(t, "fail_kind") not in NEVER_RAN)  # fmt: skip
    active = sum(1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    active += sum(1 for t in trials if retryable(t, trials, retried, retries))
    return done + active < target


ASK_LEASE = "ask"
ASK_LEASE_S = 30.0  # a worker killed while asking holds the others up this long at most

_T = TypeVar("_T")
_jitter = random.Random()  # the lease's backoff only: the study's seeded RNGs stay untouched


def slot_lease(slot: tuple[Any, Any, Any]) -> str:
    """The lease under which a fork tree's slot is filled (asked, sampled, registered), retried
    or its unregistered trial taken over: one per slot, so workers asking for different slots
    never wait on each other."""
    return "node:{}:{}:{}".format(*slot)


def lease_of(t: FrozenTrial) -> str:
    """The lease trial `t` was asked under: its slot's, for a node of a fork tree (a retry has
    its failed node's slot), else the study-wide ask lease (fork-from-base, classic)."""
    if PREFIX + "generation" not in t.user_attrs:
        return ASK_LEASE
    return slot_lease(tuple(trial_attr(t, k) for k in ("generation", "parent_trial", "child")))


def with_lease(ctx: RunContext, key: str, fn: Callable[[], _T]) -> _T:
    """Run `fn` holding lease `key` (`ASK_LEASE` or a slot's), waiting for it with a jittered
    exponential backoff (5 ms doubling to 0.25 s): workers that lost it together do not all try
    again together, and a long wait costs a few writes a second, not fifty. Held a second or
    more, its holder may have died: stale attempts are closed and their leases freed."""
    lin = ctx.lineage
    delay, waited, sweep = 0.005, 0.0, 1.0
    while not lin.take_lease(key, ctx.presence, ttl_s=ASK_LEASE_S):
        ctx.check_stop()
        pause = delay * _jitter.uniform(0.5, 1.5)
        time.sleep(pause)
        waited += pause
        delay = min(2 * delay, 0.25)
        if waited >= sweep:
            sweep += 1.0
            lin.close_stale_attempts(grace_s=ctx.settings.trials.grace_s)
            lin.release_orphan_leases()
    try:
        return fn()
    finally:
        lin.release_lease(key, ctx.presence)


def with_ask_lease(ctx: RunContext, fn: Callable[[], _T]) -> _T:
    """Run `fn` holding the study's ask lease. Deciding what to ask and asking are one step for
    a study whose trials hold no slot: two workers that both see one trial missing would
    otherwise both ask for it, and a trial enqueued with fixed params (a retry) would be popped
    by whichever worker asks next. It is held for the decision, the ask and the registration,
    not while the sampler samples (`new_job`)."""
    return with_lease(ctx, ASK_LEASE, fn)


def new_job(ctx: RunContext, target: int, *, parent: str | None) -> Job | None:
    """A new Optuna trial starting from `parent` (None: from scratch), if the study needs one.

    The trial is asked and registered under the ask lease, and sampled after it: the sampler
    (TPE reads every trial) holds no other worker up. A worker that dies between the two leaves
    a registered trial without params, which the takeover samples as this one would have (the
    sampler is seeded by the trial's number: `resample`)."""

    def ask_one() -> tuple[optuna.Trial, str] | None:
        if not wanted(ctx, target):
            return None
        ctx.pin([parent])
        trial = ask(ctx)
        return trial, ctx.lineage.start_attempt(trial.number)

    asked = with_ask_lease(ctx, ask_one)
    if asked is None:
        return None
    trial, token = asked
    hp = trial_hparams(ctx.settings, suggest(trial, ctx.settings))
    return Job(trial.number, bridge.trial_id(trial), hp, "new", token, parent=parent, handle=trial)
