"""A worker that claims work on an old look at the study claims nothing.

Races made to happen here by replaying the interleaving (no clocks): another worker
finishes a trial, or the warm-up, between this worker's look and its claim; or it has asked a
trial and not yet registered it (under the study's ask lease, or a tree slot's own lease, which
leaves the other slots free to ask). The claim that ran nothing is withdrawn, or never made: each
trial and the warm-up keep exactly one `done` attempt, and nothing is trained twice.
`test_two_workers_share_one_study` once failed on `['done', 'dead']` this way.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from optuna.trial import TrialState

from hpsearch.lineage import WARMUP
from hpsearch.search import asking
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.asking import ASK_LEASE
from hpsearch.search.context import RunContext
from hpsearch.search.jobs import Job
from hpsearch.search.records import PREFIX, set_study_attr, study_attr, trial_attr
from hpsearch.search.restore import Restorer
from hpsearch.search.scheduler.fork_from_base import ForkFromBase
from hpsearch.search.scheduler.tree import Tree
from hpsearch.search.session import Session
from hpsearch.search.trial import TrialRunner
from hpsearch.search.worker import Worker
from hpsearch.testing.conformance.scheduler import close_context, run_context, tiny_study


@pytest.fixture
def base_study(tmp_path) -> Iterator[tuple[RunContext, ForkFromBase, TrialRunner]]:
    ctx = run_context(Session.open(tiny_study(tmp_path)))
    restorer = Restorer(ctx)
    scheduler = ForkFromBase(ctx, restorer)
    try:
        scheduler.prepare()  # the warm-up, once
        yield ctx, scheduler, TrialRunner(ctx, restorer, scheduler)
    finally:
        close_context(ctx)


def test_a_trial_finished_since_the_look_is_not_taken_over(base_study):
    ctx, scheduler, runner = base_study
    job = scheduler.new_job(1)
    assert job is not None
    seen = copy.deepcopy(ctx.session.study.get_trials()[0])  # looked at while it ran
    assert seen.state == TrialState.RUNNING
    assert runner.run(job).state == "COMPLETE"  # its worker finished it
    trials = ctx.session.study.get_trials(deepcopy=False)
    claim = Worker(ctx.session)._takeover(ctx, seen, trials, scheduler)
    assert claim is None
    assert [a.status for a in ctx.lineage.attempts(job.number)] == ["done"]
    assert ctx.lineage.current_attempt(job.number) is None


def test_a_warmup_finished_since_the_look_is_not_run_again(base_study, monkeypatch):
    ctx, scheduler, _ = base_study
    study, lin = ctx.session.study, ctx.lineage
    base = study_attr(study, "base_checkpoint")
    assert base and [a.status for a in lin.attempts(WARMUP)] == ["done"]
    set_study_attr(study, "base_checkpoint", None)  # as this worker's look saw the study
    look = lin.current_attempt

    def finished_in_between(trial: int):  # the other worker's warm-up lands after the look
        row = look(trial)
        set_study_attr(study, "base_checkpoint", base)
        return row

    monkeypatch.setattr(lin, "current_attempt", finished_in_between)
    trained = []
    monkeypatch.setattr(scheduler, "_warm_up", lambda token: trained.append(token))
    scheduler._wait_or_warm_up()
    assert trained == []  # nothing trained again
    assert [a.status for a in lin.attempts(WARMUP)] == ["done"]  # and no claim left behind
    assert study_attr(study, "base_checkpoint") == base


def test_a_trial_asked_but_not_yet_registered_is_left_to_its_asker(base_study, monkeypatch):
    """A worker asks, samples and registers a trial under the ask lease. Another worker that
    sees the trial in between waits for the lease instead of guessing by the trial's age, and
    then finds it registered: no second attempt, however slow the asker was."""
    ctx, scheduler, _ = base_study
    assert ctx.lineage.take_lease(ASK_LEASE, "the-asker", ttl_s=60)
    asked = ctx.session.study.ask()  # the asker is between its ask and its registration
    _left_to_its_asker(ctx, scheduler, ASK_LEASE, asked.number, monkeypatch)


def _left_to_its_asker(
    ctx: RunContext, scheduler: Any, lease: str, number: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial `number` was asked under `lease`, which "the-asker" holds, and is not registered
    yet: another worker that sees it waits for the lease rather than claiming it, and once the
    asker has registered it and let the lease go, finds it registered and leaves it."""
    lin = ctx.lineage
    seen = ctx.session.study.get_trials(deepcopy=False)
    refused = threading.Event()  # the other worker asked for the lease and was turned away
    take_lease = lin.take_lease

    def watched(key: str, token: str, **kw: Any) -> bool:
        taken = take_lease(key, token, **kw)
        if key == lease and token != "the-asker" and not taken:
            refused.set()
        return taken

    monkeypatch.setattr(lin, "take_lease", watched)
    looked: list[object] = []
    other = threading.Thread(
        target=lambda: looked.append(Worker(ctx.session)._takeover(ctx, seen[-1], seen, scheduler))
    )
    other.start()
    refused.wait(60)  # an event, not a clock: 60 s is only how long a regression hangs here
    assert refused.is_set() and other.is_alive()  # waiting for the lease, not claiming
    assert [a.token for a in lin.attempts(number)] == []
    token = lin.start_attempt(number)  # the asker registers it, then lets the lease go
    lin.release_lease(lease, "the-asker")
    other.join(60)
    assert looked == [None]
    assert [a.token for a in lin.attempts(number)] == [token]


# -- a fork tree: each slot is asked under a lease of its own ----------------------------------

ROOT0 = "node:0:None:0"  # the lease of the tree's first root slot (`asking.slot_lease`)


@pytest.fixture
def tree_study(tmp_path) -> Iterator[tuple[RunContext, Tree]]:
    ctx = run_context(Session.open(tiny_study(tmp_path, tree=True)))
    try:
        yield ctx, Tree(ctx)
    finally:
        close_context(ctx)


def _place(child: int) -> dict[str, Any]:
    return {PREFIX + "generation": 0, PREFIX + "parent_trial": None, PREFIX + "child": child}


def test_a_worker_asking_for_one_slot_holds_up_no_other(tree_study, monkeypatch):
    """Another worker is asking for the first root: it holds that slot's lease (and the study's
    ask lease, as a worker of an older hpsearch held it while TPE sampled). This worker asks the
    second root at once: it tries each lease once and waits for none. Before, every worker
    queued for the one study-wide lease, spinning."""
    ctx, tree = tree_study
    lin = ctx.lineage
    assert lin.take_lease(ROOT0, "the-asker", ttl_s=60)
    assert lin.take_lease(ASK_LEASE, "the-asker", ttl_s=60)
    refused: list[str] = []
    take_lease = lin.take_lease

    def once(key: str, token: str, **kw: Any) -> bool:
        taken = take_lease(key, token, **kw)
        if not taken:
            assert key not in refused, f"waited for the lease {key!r}"
            refused.append(key)
        return taken

    monkeypatch.setattr(lin, "take_lease", once)
    job = tree.new_job(3)
    assert isinstance(job, Job) and job.generation == 0
    asked = bridge.frozen(ctx.session.study, job.trial_id)
    assert trial_attr(asked, "child") == 1 and refused == [ROOT0]
    assert asking.slot_lease((0, None, 0)) == ROOT0


def test_a_tree_node_asked_but_not_yet_registered_is_left_to_its_asker(tree_study, monkeypatch):
    """As for a trial of a study without slots, but under the slot's own lease: a worker that
    sees a root asked and not registered waits for that slot's lease, then finds it
    registered."""
    ctx, tree = tree_study
    assert ctx.lineage.take_lease(ROOT0, "the-asker", ttl_s=60)
    ctx.session.study.enqueue_trial({}, user_attrs=_place(0))
    asked = ctx.session.study.ask()  # the asker is between its ask and its registration
    _left_to_its_asker(ctx, tree, ROOT0, asked.number, monkeypatch)
