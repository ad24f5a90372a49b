"""Garbage collection by lineage, never by age.

A checkpoint is kept only while something needs it:
- the base checkpoint (the warm-up's end), always; another base (a warm-up cut off between its
  save and its adoption) goes only while the adopted base is a committed base row of the tree;
- the warm-up's newest checkpoint while the warm-up runs (before the study adopts a base);
- a live (running) trial's newest committed checkpoint -- and, until it has one, the checkpoint
  it was forked or continued from;
- a failed trial's newest checkpoint while it may still be continued (retries left);
- a completed trial's final checkpoint while the trial is among the best `keep_best`.
Everything else -- pruned trials' checkpoints, older checkpoints of any trial -- goes.

Deleting marks the row `deleting` before the files go and `deleted` after, so a crash mid-GC
leaves nothing half-deleted that is still listed as loadable, and a rerun finishes the job.
GC knows nothing of Optuna: the caller describes the trials as `TrialFacts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from hpsearch.lineage import LIVE, WARMUP, CheckpointRow, Lineage


@dataclass(frozen=True)
class TrialFacts:
    number: int
    state: str  # RUNNING | WAITING | COMPLETE | PRUNED | FAIL
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


def plan_gc(
    rows: Iterable[CheckpointRow],
    trials: Mapping[int, TrialFacts],
    *,
    keep_best: int,
    direction: str,
    base: str | None,
    warmup_running: bool,
) -> list[Deletion]:
    """Which checkpoints no one needs any more, and why. A pure function of the tree."""
    rows = [r for r in rows if r.status in (*LIVE, "deleting")]
    by_trial: dict[int, list[CheckpointRow]] = {}
    for r in rows:
        by_trial.setdefault(r.trial, []).append(r)

    keep: set[str] = {base} if base else set()
    adopted = any(r.id == base and r.trial == WARMUP and r.kind == "base" for r in rows)
    if not adopted:
        # the study's base attribute names no base of this tree (damaged, or the warm-up is not
        # done): no base is provably an orphan, so none goes -- deleting the real one would end
        # the study
        keep |= {r.id for r in rows if r.trial == WARMUP and r.kind == "base"}
    for r in rows:
        if r.status == "pending":
            keep.add(r.id)  # being written: its writer decides
    if warmup_running:
        keep |= _newest_committed(by_trial.get(WARMUP, []))

    finals = []
    for number, facts in trials.items():
        own = by_trial.get(number, [])
        if facts.state in ("RUNNING", "WAITING") or (facts.state == "FAIL" and facts.retryable):
            newest = _newest_committed(own)
            keep |= newest
            if not newest and facts.parent:
                keep.add(facts.parent)
        elif facts.state == "COMPLETE":
            final = [r for r in own if r.kind == "final" and r.status == "committed"]
            if final and facts.value is not None:
                finals.append((facts.value, number, final[-1].id))
    finals.sort(key=lambda f: (-f[0] if direction == "maximize" else f[0], f[1]))
    keep |= {ckpt for _, _, ckpt in finals[:keep_best]}

    out = []
    for r in rows:
        if r.id in keep:
            continue
        facts = trials.get(r.trial)
        state = facts.state if facts else ("WARMUP" if r.trial == WARMUP else "UNKNOWN")
        if r.trial == WARMUP and r.kind == "base":
            reason = "a base checkpoint that was never adopted (the warm-up was cut off)"
        elif r.trial == WARMUP:
            reason = "warm-up checkpoint superseded by a newer one"
        elif state == "PRUNED":
            reason = f"trial {r.trial} was pruned"
        elif state == "COMPLETE" and r.kind == "final":
            reason = f"trial {r.trial} is no longer among the best {keep_best}"
        elif state == "FAIL":
            reason = f"trial {r.trial} failed and will not be continued"
        elif r.status == "deleting":
            reason = "deletion interrupted earlier"
        else:
            reason = f"superseded by a newer checkpoint of trial {r.trial}"
        if facts is None and r.trial != WARMUP and r.status != "deleting":
            continue  # a trial we know nothing about (another study's worker mid-ask): keep
        out.append(Deletion.of(r, reason))
    return out


def _newest_committed(rows: list[CheckpointRow]) -> set[str]:
    done = [r for r in rows if r.status == "committed"]
    return {max(done, key=lambda r: (r.step, r.created)).id} if done else set()


def apply_gc(
    deletions: Iterable[Deletion],
    lineage: Lineage,
    delete_files: Callable[[str], None],
) -> int:
    """Delete the planned checkpoints: mark, delete files, mark done. Returns bytes freed."""
    freed = 0
    for d in deletions:
        lineage.set_status(d.id, "deleting")
        delete_files(d.id)
        lineage.set_status(d.id, "deleted")
        freed += d.nbytes
    return freed
