"""Garbage collection by reachability over the lineage, never by age.

A checkpoint is kept while something may still start from it or is pinned by a rule:
- a live (running or queued) trial's newest committed checkpoint -- and, until it has one, the
  checkpoint it was forked or continued from;
- a failed trial's newest checkpoint while it may still be continued (retries left);
- a completed trial's final checkpoint while the trial is among the best `keep_best`;
- what the study's scheduler pins: the checkpoints new trials may fork from (the base, the
  warm-up's newest while the warm-up runs, a tree's survivors);
- a row being written (its writer decides).
Everything else -- pruned trials' checkpoints, older checkpoints of any trial -- goes.

Deleting marks the row `deleting` before the files go and `deleted` after, so a crash mid-GC
leaves nothing half-deleted that is still listed as loadable, and a rerun finishes the job.
GC knows nothing of Optuna: the caller describes the trials as `TrialFacts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from hpsearch import failpoints
from hpsearch.lineage.model import LIVE, WARMUP, CheckpointRow
from hpsearch.lineage.protocol import Lineage

TrialState = Literal["RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL"]


@dataclass(frozen=True)
class TrialFacts:
    number: int
    state: TrialState  # as Optuna names it
    value: float | None = None
    retryable: bool = False  # a FAIL trial that a later run may continue
    parent: str | None = None  # the checkpoint it was forked or continued from


@dataclass(frozen=True)
class Deletion:
    id: str
    trial: int
    kind: str
    nbytes: int
    reason: str

    @classmethod
    def of(cls, row: CheckpointRow, reason: str) -> Deletion:
        return cls(row.id, row.trial, row.kind, row.nbytes, reason)


def collectable(
    rows: Iterable[CheckpointRow],
    trials: Mapping[int, TrialFacts],
    *,
    pins: Iterable[str],
    keep_best: int,
    direction: str,
) -> list[Deletion]:
    """Which checkpoints nothing can reach any more, and why. A pure function of the tree."""
    rows = [r for r in rows if r.status in (*LIVE, "deleting")]
    keep = _reachable(rows, trials, keep_best=keep_best, direction=direction)
    keep |= set(pins)
    out = []
    for r in rows:
        if r.id in keep:
            continue
        facts = trials.get(r.trial)
        if facts is None and r.trial != WARMUP and r.status != "deleting":
            continue  # a trial we know nothing about (another study's worker mid-ask): keep
        out.append(Deletion.of(r, _reason(r, facts, keep_best)))
    return out


def _reachable(
    rows: list[CheckpointRow], trials: Mapping[int, TrialFacts], *, keep_best: int, direction: str
) -> set[str]:
    by_trial: dict[int, list[CheckpointRow]] = {}
    for r in rows:
        by_trial.setdefault(r.trial, []).append(r)
    keep = {r.id for r in rows if r.status == "pending"}
    finals = []
    for number, facts in trials.items():
        own = by_trial.get(number, [])
        if facts.state in ("RUNNING", "WAITING") or (facts.state == "FAIL" and facts.retryable):
            newest = newest_committed(own)
            keep |= newest
            if not newest and facts.parent:
                keep.add(facts.parent)
        elif facts.state == "COMPLETE":
            final = [r for r in own if r.kind == "final" and r.status == "committed"]
            if final and facts.value is not None:
                finals.append((facts.value, number, final[-1].id))
    finals.sort(key=lambda f: (-f[0] if direction == "maximize" else f[0], f[1]))
    keep |= {ckpt for _, _, ckpt in finals[:keep_best]}
    return keep


def _reason(r: CheckpointRow, facts: TrialFacts | None, keep_best: int) -> str:
    state = facts.state if facts else ("WARMUP" if r.trial == WARMUP else "UNKNOWN")
    if r.trial == WARMUP and r.kind == "base":
        return "a base checkpoint that was never adopted (the warm-up was cut off)"
    if r.trial == WARMUP:
        return "warm-up checkpoint superseded by a newer one"
    if state == "PRUNED":
        return f"trial {r.trial} was pruned"
    if state == "COMPLETE" and r.kind == "final":
        return f"trial {r.trial} is no longer among the best {keep_best}"
    if state == "FAIL":
        return f"trial {r.trial} failed and will not be continued"
    if r.status == "deleting":
        return "deletion interrupted earlier"
    return f"superseded by a newer checkpoint of trial {r.trial}"


def newest_committed(rows: list[CheckpointRow]) -> set[str]:
    done = [r for r in rows if r.status == "committed"]
    return {max(done, key=lambda r: (r.step, r.created)).id} if done else set()


def apply_gc(
    deletions: Iterable[Deletion],
    lineage: Lineage,
    delete_files: Callable[[str], None],
    *,
    renew: Callable[[], bool] | None = None,
) -> int:
    """Delete the planned checkpoints: mark, delete files, mark done. Returns bytes freed. A
    checkpoint pinned meanwhile is kept. `renew` is called before each deletion (a GC lease):
    when it says the lease is lost, stop."""
    freed = 0
    for d in deletions:
        if renew is not None and not renew():
            break
        row = lineage.get(d.id)
        if row is None or row.status == "deleted":
            continue  # another collector was first: deleting is idempotent
        lineage.set_status(d.id, "deleting")
        # a worker pins before it checks that a checkpoint is still committed, and GC marks
        # before it checks the pins: whichever comes second sees the other, so a checkpoint is
        # never deleted under a worker that is about to load it. (A deletion that was already
        # under way, with files maybe half gone, is finished whatever pins it.)
        if row.status == "committed" and d.id in lineage.pinned():
            lineage.set_status(d.id, "committed")
            continue
        failpoints.passed("gc.marked")
        delete_files(d.id)
        failpoints.passed("gc.files_deleted")
        lineage.set_status(d.id, "deleted")
        freed += d.nbytes
    return freed
