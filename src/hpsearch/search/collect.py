"""Settling a study's checkpoints: recovery after a crash, and garbage collection.

Both work on an open `Session` alone -- `hpsearch gc` needs no worker -- and describe Optuna's
trials to the lineage's pure GC rule as `TrialFacts`.
"""

from __future__ import annotations

import sys

from hpsearch.lineage import attempt_is_stale
from hpsearch.lineage.gc import Deletion, TrialFacts, apply_gc, collectable
from hpsearch.search.records import trial_attr
from hpsearch.search.retries import retried_numbers, retryable
from hpsearch.search.scheduler import pins_of
from hpsearch.search.session import Session


def recover(session: Session) -> None:
    """Settle what a crash left: rows of saves that did or did not commit, deletions that did not
    finish, and torn files in the store."""
    lin, store = session.lineage, session.store
    grace = session.settings.trials.grace_s
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
    apply_gc([Deletion.of(r, "deletion interrupted earlier") for r in doomed], lin, store.delete)
    if not alive:  # no other worker may be writing: torn temporary files can go
        store.clean_leftovers()


def trial_facts(session: Session) -> dict[int, TrialFacts]:
    trials = session.study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    retries = session.settings.trials.retries
    out = {}
    for t in trials:
        out[t.number] = TrialFacts(
            t.number, t.state.name,  # type: ignore[arg-type]  # Optuna's names are the Literal's
            t.value, retryable=retryable(t, trials, retried, retries),
            parent=trial_attr(t, "parent_checkpoint"),
        )  # fmt: skip
    return out


def collect_garbage(session: Session, *, dry_run: bool = False) -> list[Deletion]:
    """Delete every checkpoint nothing can reach (or, with `dry_run`, list them)."""
    lin, s = session.lineage, session.settings
    rows = lin.checkpoints()
    doomed = collectable(
        rows, trial_facts(session), pins=pins_of(session, rows),
        keep_best=s.checkpoints.keep_best, direction=s.objective.direction,
    )  # fmt: skip
    if not dry_run:
        apply_gc(doomed, lin, session.store.delete)
    return doomed


def collect_garbage_quietly(session: Session) -> None:
    try:
        collect_garbage(session)
    except Exception as exc:  # never hide the real error behind a GC failure
        print(f"warning: garbage collection failed: {exc}", file=sys.stderr)
