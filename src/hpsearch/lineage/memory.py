"""The lineage in this process's memory: the same rules as `SqlLineage`, for tests and for the
conformance suite. Thread-safe; several `MemoryLineage`s (of one or several studies) share a
`MemoryDatabase` as several `SqlLineage`s share a database file. Nothing outlives the process,
so a study run by several processes needs `SqlLineage`."""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from hpsearch.lineage.model import (
    AttemptRow,
    AttemptStatus,
    CheckpointKind,
    CheckpointRow,
    CheckpointStatus,
    DuplicateCheckpoint,
    attempt_is_stale,
    invalid_id_reason,
    keep_valid,
)

if TYPE_CHECKING:
    from hpsearch.lineage.protocol import Lineage


class MemoryDatabase:
    """The tables: rows by checkpoint id (unique across studies, as in SQL), attempts by token,
    claims by (study, key). One lock guards them all, so each method is one transaction."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checkpoints: dict[str, CheckpointRow] = {}
        self.attempts: dict[str, AttemptRow] = {}
        self.claims: set[tuple[str, str]] = set()
        self.pins: dict[tuple[str, str, str], float] = {}  # (study, ckpt, token) -> expires
        self.leases: dict[tuple[str, str], tuple[str, float]] = {}  # -> (token, expires)


class MemoryLineage:
    """The lineage of one study in a `MemoryDatabase` (a new, empty one when none is given)."""

    def __init__(self, study: str, database: MemoryDatabase | None = None) -> None:
        self._study = study
        self.database = MemoryDatabase() if database is None else database
        self._warned: set[str] = set()

    @property
    def study(self) -> str:
        return self._study

    def close(self) -> None:
        pass  # the database stays for the other lineages that share it

    # -- checkpoints -------------------------------------------------------------------------

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
        now = time.time()
        row = CheckpointRow(
            id=ckpt_id, study=self.study, trial=trial, attempt=attempt, kind=kind, parent=parent,
            step=step, samples=samples, epoch=epoch, nbytes=0, status="pending", created=now,
            updated=now,
        )  # fmt: skip
        db = self.database
        with db.lock:
            if ckpt_id in db.checkpoints:
                raise DuplicateCheckpoint(f"checkpoint id {ckpt_id!r} is a row already")
            db.checkpoints[ckpt_id] = row

    def set_status(
        self,
        ckpt_id: str,
        status: CheckpointStatus,
        *,
        nbytes: int | None = None,
        kind: CheckpointKind | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status, "updated": time.time()}
        if nbytes is not None:
            values["nbytes"] = nbytes
        if kind is not None:
            values["kind"] = kind
        db = self.database
        with db.lock:
            row = self._row(ckpt_id)
            if row is not None:
                db.checkpoints[ckpt_id] = dataclasses.replace(row, **values)

    def get(self, ckpt_id: str) -> CheckpointRow | None:
        with self.database.lock:
            return self._row(ckpt_id)

    def _row(self, ckpt_id: str) -> CheckpointRow | None:
        row = self.database.checkpoints.get(ckpt_id)
        return row if row is not None and row.study == self.study else None

    def _rows(self, statuses: tuple[CheckpointStatus, ...] | None) -> list[CheckpointRow]:
        with self.database.lock:
            rows = [r for r in self.database.checkpoints.values() if r.study == self.study]
        return [r for r in rows if statuses is None or r.status in statuses]

    def checkpoints(
        self,
        *,
        trial: int | None = None,
        statuses: tuple[CheckpointStatus, ...] | None = None,
        kinds: tuple[CheckpointKind, ...] | None = None,
    ) -> list[CheckpointRow]:
        rows = [
            r
            for r in self._rows(statuses)
            if (trial is None or r.trial == trial) and (kinds is None or r.kind in kinds)
        ]
        rows.sort(key=lambda r: (r.trial, r.step, r.created))
        return keep_valid(rows, self._warned)

    def invalid_ids(self, *, statuses: tuple[CheckpointStatus, ...] | None = None) -> list[str]:
        return [r.id for r in self._rows(statuses) if invalid_id_reason(r.id) is not None]

    # -- attempts ----------------------------------------------------------------------------

    def start_attempt(self, trial: int, *, resumed_from: str | None = None) -> str:
        with self.database.lock:
            return self._insert_attempt(trial, resumed_from)

    def _insert_attempt(self, trial: int, resumed_from: str | None) -> str:
        token = secrets.token_hex(8)
        now = time.time()
        self.database.attempts[token] = AttemptRow(
            token=token, study=self.study, trial=trial, host=socket.gethostname(),
            pid=os.getpid(), status="running", started=now, heartbeat=now, start_step=0,
            steps=0, samples=0, resumed_from=resumed_from,
        )  # fmt: skip
        return token

    def take_over(
        self, trial: int, old_token: str | None, *, resumed_from: str | None
    ) -> str | None:
        db = self.database
        with db.lock:
            if old_token is not None:
                old = db.attempts.get(old_token)
                if old is None or old.status != "running":
                    return None
                db.attempts[old_token] = dataclasses.replace(old, status="dead")
            elif self._current_attempt(trial) is not None:
                return None
            return self._insert_attempt(trial, resumed_from)

    def heartbeat(
        self,
        token: str,
        *,
        steps: int | None = None,
        samples: int | None = None,
        start_step: int | None = None,
    ) -> bool:
        values: dict[str, Any] = {"heartbeat": time.time()}
        for key, value in (("steps", steps), ("samples", samples), ("start_step", start_step)):
            if value is not None:
                values[key] = value
        return self._update_running(token, values)

    def _update_running(self, token: str, values: dict[str, Any]) -> bool:
        db = self.database
        with db.lock:
            row = db.attempts.get(token)
            if row is None or row.status != "running":
                return False
            db.attempts[token] = dataclasses.replace(row, **values)
            return True

    def owns(self, token: str) -> bool:
        with self.database.lock:
            row = self.database.attempts.get(token)
        return row is not None and row.status == "running"

    def finish_attempt(self, token: str, status: AttemptStatus = "done") -> None:
        self._update_running(token, {"status": status, "heartbeat": time.time()})

    def withdraw(self, token: str) -> None:
        db = self.database
        with db.lock:
            row = db.attempts.get(token)
            if row is not None and row.study == self.study and row.status == "running":
                del db.attempts[token]

    def current_attempt(self, trial: int) -> AttemptRow | None:
        with self.database.lock:
            return self._current_attempt(trial)

    def _current_attempt(self, trial: int) -> AttemptRow | None:
        running = [
            a
            for a in self.database.attempts.values()
            if a.study == self.study and a.trial == trial and a.status == "running"
        ]
        # newest first; of two started at the same instant, the one inserted last
        return max(reversed(running), key=lambda a: a.started, default=None)

    def attempts(self, trial: int | None = None) -> list[AttemptRow]:
        with self.database.lock:
            rows = [a for a in self.database.attempts.values() if a.study == self.study]
        rows = [a for a in rows if trial is None or a.trial == trial]
        return sorted(rows, key=lambda a: a.started)

    def claim(self, key: str) -> bool:
        db = self.database
        with db.lock:
            if (self.study, key) in db.claims:
                return False
            db.claims.add((self.study, key))
            return True

    # -- pins, leases, stale attempts --------------------------------------------------------

    def pin(self, ckpt_id: str, token: str, *, ttl_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        db = self.database
        with db.lock:
            for key, expires in list(db.pins.items()):
                if key[0] == self.study and expires <= now:
                    del db.pins[key]
            db.pins[(self.study, ckpt_id, token)] = now + ttl_s

    def unpin(self, ckpt_id: str, token: str) -> None:
        with self.database.lock:
            self.database.pins.pop((self.study, ckpt_id, token), None)

    def pinned(self, *, now: float | None = None) -> set[str]:
        now = time.time() if now is None else now
        with self.database.lock:
            items = list(self.database.pins.items())
        return {ckpt for (study, ckpt, _), exp in items if study == self.study and exp > now}

    def take_lease(self, key: str, token: str, *, ttl_s: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        db = self.database
        with db.lock:
            held = db.leases.get((self.study, key))
            if held is not None and held[0] != token and held[1] > now:
                return False
            db.leases[(self.study, key)] = (token, now + ttl_s)
            return True

    def release_lease(self, key: str, token: str) -> None:
        db = self.database
        with db.lock:
            held = db.leases.get((self.study, key))
            if held is not None and held[0] == token:
                del db.leases[(self.study, key)]

    def release_orphan_leases(self) -> int:
        db = self.database
        with db.lock:
            ended = {t for t, a in db.attempts.items() if a.study == self.study
                     and a.status != "running"}  # fmt: skip
            orphans = [k for k, (token, _) in db.leases.items()
                       if k[0] == self.study and token in ended]  # fmt: skip
            for k in orphans:
                del db.leases[k]
        return len(orphans)

    def close_stale_attempts(self, *, grace_s: float, now: float | None = None) -> int:
        db = self.database
        closed = 0
        with db.lock:
            for token, row in list(db.attempts.items()):
                if row.study != self.study or row.status != "running":
                    continue
                if attempt_is_stale(row, grace_s=grace_s, now=now):
                    db.attempts[token] = dataclasses.replace(row, status="dead")
                    closed += 1
        return closed


if TYPE_CHECKING:
    _: Lineage = MemoryLineage("conformance")  # mypy: MemoryLineage fits the Protocol
