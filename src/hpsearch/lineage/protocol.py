"""What a lineage backend must do: the checkpoint tree and the coordination of workers.

A lineage serves one study; several lineages (of one or several studies, in one or several
processes) may share a database. Everything is keyed by study name and trial number and knows
nothing of Optuna. `hpsearch.testing.conformance.lineage.LineageTestCase` checks these rules
against a backend; `SqlLineage` (sqlite, PostgreSQL, directly and through PgBouncer, the
SQLite file beside a journal storage) and `MemoryLineage` pass it.
"""

from __future__ import annotations

from typing import Protocol

from hpsearch.lineage.model import (
    AttemptRow,
    AttemptStatus,
    CheckpointKind,
    CheckpointRow,
    CheckpointStatus,
)


class CheckpointTree(Protocol):
    """The checkpoint rows of one study: what each checkpoint is for and where it stands."""

    @property
    def study(self) -> str: ...

    def add_pending(
        self,
        ckpt_id: str,
        *,
        trial: int,
        kind: CheckpointKind,
        parent: str | None,
        step: int,
        samples: int,
        epoch: float,
        attempt: str | None = None,
    ) -> None:
        """Record a checkpoint about to be written: status `pending`, `nbytes` 0. Raises
        `DuplicateCheckpoint` when the id is a row already (ids are unique in the database)."""
        ...

    def set_status(
        self,
        ckpt_id: str,
        status: CheckpointStatus,
        *,
        nbytes: int | None = None,
        kind: CheckpointKind | None = None,
    ) -> None:
        """Move a row of this study to `status` (and set `nbytes`, `kind` when given), touching
        `updated`. An id with no row of this study is ignored."""
        ...

    def get(self, ckpt_id: str) -> CheckpointRow | None:
        """The row of this study with that id, or None."""
        ...

    def checkpoints(
        self,
        *,
        trial: int | None = None,
        statuses: tuple[CheckpointStatus, ...] | None = None,
        kinds: tuple[CheckpointKind, ...] | None = None,
    ) -> list[CheckpointRow]:
        """Rows of this study ordered by trial, step, then creation; each filter that is given
        narrows. A row whose id is not a valid checkpoint id (`check_id`) is left out, with one
        warning on stderr per id: no caller may turn it into a path or delete by it."""
        ...

    def invalid_ids(self, *, statuses: tuple[CheckpointStatus, ...] | None = None) -> list[str]:
        """Ids of this study's rows that `checkpoints()` leaves out as invalid."""
        ...


class Coordination(Protocol):
    """The attempts of trials (with heartbeats and takeovers), one-time claims, and worker
    presence (attempts of trial `WORKERS`). Every run of a trial holds a random token; a worker
    that was wrongly declared dead finds its token superseded and must not commit (`owns`)."""

    def start_attempt(self, trial: int, *, resumed_from: str | None = None) -> str:
        """Register this process as a runner of `trial` (status `running`); returns its token.
        Unconditional: use `take_over` where two workers may start the same trial."""
        ...

    def take_over(
        self, trial: int, old_token: str | None, *, resumed_from: str | None
    ) -> str | None:
        """Start our attempt of `trial` atomically, or return None: with `old_token`, only
        while that attempt is still running (it becomes `dead`); with None, only while the
        trial has no running attempt. Of any number of workers that try at once (in any
        processes), exactly one gets a token."""
        ...

    def heartbeat(
        self,
        token: str,
        *,
        steps: int | None = None,
        samples: int | None = None,
        start_step: int | None = None,
    ) -> bool:
        """Refresh a running attempt's heartbeat and the counts given; False when the attempt
        is no longer running (taken over or finished): its worker must stop."""
        ...

    def owns(self, token: str) -> bool:
        """True while the attempt is running."""
        ...

    def finish_attempt(self, token: str, status: AttemptStatus = "done") -> None:
        """End a running attempt as `done` or `dead`; an attempt that is not running is left."""
        ...

    def withdraw(self, token: str) -> None:
        """Remove a running attempt that ran nothing: a claim made on an old look at the study
        (its trial finished, or the warm-up's base was set, between the look and the claim).
        An attempt that is not running is left."""
        ...

    def current_attempt(self, trial: int) -> AttemptRow | None:
        """The newest running attempt of `trial` in this study, or None."""
        ...

    def attempts(self, trial: int | None = None) -> list[AttemptRow]:
        """This study's attempts (of one trial when given), oldest first."""
        ...

    def claim(self, key: str) -> bool:
        """Take a study-wide one-time claim (e.g. "retry:7"); True for the first taker only."""
        ...

    def pin(self, ckpt_id: str, token: str, *, ttl_s: float, now: float | None = None) -> None:
        """Hold checkpoint `ckpt_id` for the attempt `token` (a worker about to fork from it)
        until `now + ttl_s`, so that no garbage collection deletes it; pinning it again renews
        the pin. Several attempts may pin one checkpoint. `now` defaults to the clock.

        A pin and a collection each write, then read what the other writes: the forker pins,
        then checks that the row is still `committed` (else it unpins and picks another
        parent); the collector marks a row `deleting`, then reads `pinned()` and sets any
        pinned one back to `committed` before deleting a file. Whichever writes second sees
        the other's write, so no checkpoint is both forked from and deleted."""
        ...

    def unpin(self, ckpt_id: str, token: str) -> None:
        """Drop the pin of `token` on `ckpt_id` (nothing when there is none); others stay."""
        ...

    def pinned(self, *, now: float | None = None) -> set[str]:
        """The ids of this study's checkpoints held by a pin that has not expired at `now`."""
        ...

    def take_lease(self, key: str, token: str, *, ttl_s: float, now: float | None = None) -> bool:
        """Take (or renew) the study-wide lease `key` (e.g. "gc") for `token` until
        `now + ttl_s`: True when it was free, expired at `now`, or already held by `token`;
        False while another token holds it. Of any number of takers at once, one wins."""
        ...

    def release_lease(self, key: str, token: str) -> None:
        """Free lease `key` if `token` holds it (else nothing: another holder keeps it)."""
        ...

    def release_orphan_leases(self) -> int:
        """Free every lease of this study whose holder is an attempt that has ended (`dead`,
        after `close_stale_attempts`, or `done`): a worker killed while it held one would hold
        the others up until it expired. A holder that is no attempt (a `gc` command's own
        token) keeps its lease. Returns how many were freed."""
        ...

    def close_stale_attempts(self, *, grace_s: float, now: float | None = None) -> int:
        """Mark `dead` every `running` attempt of this study (of any trial, `WORKERS` presence
        rows included) that `attempt_is_stale` at `now`; how many it marked. An attempt that
        beats in the meantime is left running."""
        ...


class Lineage(CheckpointTree, Coordination, Protocol):
    """The checkpoint tree and the coordination of one study. Open one with `open_lineage`."""

    def close(self) -> None:
        """Release what this lineage opened (not an engine it was given)."""
        ...
