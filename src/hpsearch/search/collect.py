"""Settling a study's checkpoints: recovery after a crash, and garbage collection.

Both work on an open `Session` alone -- `hpsearch gc` needs no worker -- and describe Optuna's
trials to the lineage's pure GC rule as `TrialFacts`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError
from hpsearch.lineage import LIVE, CheckpointRow, attempt_is_stale
from hpsearch.lineage.gc import Deletion, TrialFacts, apply_gc, collectable
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.records import PREFIX, trial_attr
from hpsearch.search.retries import retried_numbers, retryable
from hpsearch.search.scheduler import pins_of
from hpsearch.search.session import Session
from hpsearch.search.winner import winner

GC_LEASE = "gc"
# short, and renewed before every deletion: a worker killed while collecting holds up the next
# collection by seconds, not minutes
GC_LEASE_S = 10.0


def recover(session: Session, token: str) -> None:
    """Settle what a crash left: attempts of dead workers, rows of saves that did or did not
    commit, deletions that did not finish, and torn files in the store (only by the holder of the
    GC lease, and only while no other worker may be writing)."""
    lin, store = session.lineage, session.store
    grace = session.settings.trials.grace_s
    lin.close_stale_attempts(grace_s=grace)
    lin.release_orphan_leases()  # leases a dead worker held (asking, collecting)
    alive = {
        a.token
        for a in lin.attempts()
        if a.status == "running" and not attempt_is_stale(a, grace_s=grace)
    }
    settle_pending(session, [r for r in lin.checkpoints(statuses=("pending",))
                             if r.attempt not in alive])  # fmt: skip
    if not lin.take_lease(GC_LEASE, token, ttl_s=GC_LEASE_S):
        return  # another worker is collecting: it finishes interrupted deletions too
    try:
        doomed = [Deletion.of(r, "deletion interrupted earlier")
                  for r in lin.checkpoints(statuses=("deleting",))]  # fmt: skip
        # renewed as a collection renews it: a kill here holds the others up GC_LEASE_S at most
        apply_gc(doomed, lin, store.delete, renew=_renewer(session, token))
        mark_deleted_finals(session, doomed)
        if not alive - {token}:  # no other worker may be writing: torn temporary files can go
            store.clean_leftovers()
    finally:
        lin.release_lease(GC_LEASE, token)


def settle_pending(session: Session, rows: Iterable[CheckpointRow]) -> None:
    """Rows of saves whose writer died: committed if the store has the checkpoint whole (its
    manifest is the commit), else failed. Only for writers known dead: a live one decides."""
    lin, store = session.lineage, session.store
    for row in rows:
        if store.exists(row.id):
            lin.set_status(row.id, "committed", nbytes=store.info(row.id).nbytes)
        else:
            lin.set_status(row.id, "failed")


def trial_facts(
    session: Session, trials: list[FrozenTrial] | None = None, *, owners: set[int] | None = None
) -> dict[int, TrialFacts]:
    """What GC needs to know of the trials. With `owners` (the trials that own the rows GC
    decides on), only of those and of the unfinished or failed ones, which may keep their
    parent's checkpoint: a finished trial that owns no live row changes nothing GC decides, and
    reading every one of them made each collection (one a trial) grow with the study."""
    trials = session.study.get_trials(deepcopy=False) if trials is None else trials
    retried = retried_numbers(trials)
    retries = session.settings.trials.retries
    open_states = (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
    out = {}
    for t in trials:
        if owners is not None and t.number not in owners and t.state not in open_states:
            continue
        out[t.number] = TrialFacts(
            t.number, t.state.name,  # type: ignore[arg-type]  # Optuna's names are the Literal's
            t.value, retryable=retryable(t, trials, retried, retries),
            parent=trial_attr(t, "parent_checkpoint"),
        )  # fmt: skip
    return out


def collect_garbage(
    session: Session, token: str, *, dry_run: bool = False, wait: bool = False
) -> list[Deletion]:
    """Delete every checkpoint nothing can reach (or, with `dry_run`, list them). One worker at a
    time collects (the GC lease); a worker that finds it taken skips this round, or with `wait`
    waits for it (a dead holder's lease expires within GC_LEASE_S). What workers have pinned
    (about to fork from it) is reachable."""
    lin, s = session.lineage, session.settings
    if not dry_run and not _lease(session, token, wait=wait):
        if wait:
            raise HpsearchError(
                f"another collector held the study's GC lease for over {GC_LEASE_S + 5:.0f} s "
                "(a worker's, or an `hpsearch gc` still running): nothing was deleted; run "
                "`hpsearch gc` again once it is done"
            )
        return []
    try:
        # only rows GC and the pins look at: the deleted ones grow with the study, and reading
        # them all made every collection (one a trial) slower the longer the study ran
        rows = lin.checkpoints(statuses=(*LIVE, "deleting"))
        trials = session.study.get_trials(deepcopy=False)
        won = winner(session, trials)  # kept whatever keep_best says: every surface names it
        kept = {trial_attr(won, "final_checkpoint")} if won is not None else set()
        doomed = collectable(
            rows, trial_facts(session, trials, owners={r.trial for r in rows}),
            pins=pins_of(session, rows, trials) | lin.pinned() | {k for k in kept if k},
            keep_best=s.checkpoints.keep_best, direction=s.objective.direction,
        )  # fmt: skip
        if not dry_run:
            apply_gc(doomed, lin, session.store.delete, renew=_renewer(session, token))
            mark_deleted_finals(session, doomed, trials)
        return doomed
    finally:
        if not dry_run:
            lin.release_lease(GC_LEASE, token)


def mark_deleted_finals(
    session: Session, deletions: Iterable[Deletion], trials: list[FrozenTrial] | None = None
) -> None:
    """A trial whose final checkpoint GC deleted says so in `hpsearch.final_checkpoint_deleted`
    (why, as GC put it), so that the dashboard does not show a checkpoint id that is gone as if it
    were there. `hpsearch.final_checkpoint` stays: it records what the trial produced, and the
    fork tree's plan is built on it. Costs nothing while no final goes."""
    finals = {d.id: d.reason for d in deletions if d.kind == "final"}
    if not finals:
        return
    lin = session.lineage
    gone = {i: why for i, why in finals.items() if (r := lin.get(i)) and r.status != "committed"}
    for t in session.study.get_trials(deepcopy=False) if trials is None else trials:
        final = trial_attr(t, "final_checkpoint")
        if final in gone and trial_attr(t, "final_checkpoint_deleted") is None:
            why = f"deleted by garbage collection: {gone[final]}"
            bridge.set_finished_user_attrs(
                session.study, bridge.trial_id(t), {PREFIX + "final_checkpoint_deleted": why}
            )


def collect_garbage_quietly(session: Session, token: str) -> None:
    try:
        collect_garbage(session, token)
    except Exception as exc:  # never hide the real error behind a GC failure
        print(f"warning: garbage collection failed: {exc}", file=sys.stderr)


def _lease(session: Session, token: str, *, wait: bool) -> bool:
    lin = session.lineage
    deadline = time.monotonic() + GC_LEASE_S + 5
    while not lin.take_lease(GC_LEASE, token, ttl_s=GC_LEASE_S):
        if not wait or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _renewer(session: Session, token: str) -> Callable[[], bool]:
    def renew() -> bool:
        return session.lineage.take_lease(GC_LEASE, token, ttl_s=GC_LEASE_S)

    return renew
