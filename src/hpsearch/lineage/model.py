"""The rows of the lineage and their states, with no storage attached.

A checkpoint row moves through

    pending --> committed --> deleting --> deleted
       |            |
       v            v
     failed      unusable

`pending`: recorded before its files are written; `committed`: the store committed it (its
manifest is written); `deleting`: garbage collection decided it goes, before any file goes, so
a crash mid-GC never leaves a half-deleted checkpoint listed as loadable and a rerun finishes
the job; `failed`: the write never committed; `unusable`: a committed base the study could not
adopt (set aside, not deleted).

An attempt (one process running one trial) is `running` until it ends `done`, or is declared
`dead` (killed, taken over, or failed in a way that a later attempt may resume).
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from typing import Literal

from hpsearch.checkpoint.format import check_id
from hpsearch.checkpoint.procs import pid_alive

CheckpointStatus = Literal["pending", "committed", "deleting", "deleted", "failed", "unusable"]
CheckpointKind = Literal["warmup", "base", "trial", "final"]
AttemptStatus = Literal["running", "done", "dead"]

WARMUP = -1
"""The pseudo trial number of the warm-up (its checkpoints and attempts)."""

WORKERS = -2
"""The pseudo trial number of worker presence rows: one running attempt per running worker."""

LIVE: tuple[CheckpointStatus, ...] = ("pending", "committed")
"""The statuses of checkpoints that are, or may become, loadable."""


class DuplicateCheckpoint(ValueError):
    """A checkpoint id that is already a row (in any study of the database: ids are unique)."""


@dataclass(frozen=True)
class CheckpointRow:
    id: str
    study: str
    trial: int  # WARMUP for the warm-up
    attempt: str | None  # the token of the attempt that wrote it
    kind: CheckpointKind
    parent: str | None  # the checkpoint it was forked or continued from
    step: int
    samples: int
    epoch: float
    nbytes: int  # 0 until committed
    status: CheckpointStatus
    created: float
    updated: float


@dataclass(frozen=True)
class AttemptRow:
    token: str
    study: str
    trial: int
    host: str
    pid: int
    status: AttemptStatus
    started: float
    heartbeat: float
    start_step: int  # where it began
    steps: int  # steps it trained (so far)
    samples: int  # samples it trained (so far)
    resumed_from: str | None


def attempt_is_stale(row: AttemptRow, *, grace_s: float, now: float | None = None) -> bool:
    """A running attempt is stale when its heartbeat is older than the grace period, or at once
    when it ran on this host and its process is gone."""
    now = time.time() if now is None else now
    if row.host == socket.gethostname() and not pid_alive(row.pid):
        return True
    return now - row.heartbeat > grace_s


def invalid_id_reason(ckpt_id: str) -> str | None:
    """Why `ckpt_id` could not be a path in the store (a hand-edited or damaged database), or
    None when it is a valid checkpoint id."""
    try:
        check_id(ckpt_id)
    except ValueError as exc:
        return str(exc)
    return None


def keep_valid(rows: list[CheckpointRow], warned: set[str]) -> list[CheckpointRow]:
    """`rows` without those whose id is invalid, warning once per id (`warned` remembers)."""
    out = []
    for row in rows:
        reason = invalid_id_reason(row.id)
        if reason is None:
            out.append(row)
        elif row.id not in warned:
            warned.add(row.id)
            print(f"warning: skipping a checkpoint row of study {row.study!r}: {reason}",
                  file=sys.stderr)  # fmt: skip
    return out
