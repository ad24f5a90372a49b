"""The checkpoint tree and the trials' attempts, in tables beside the Optuna study.

They live in the same database as the study (sqlite by default, PostgreSQL for many machines),
through SQLAlchemy Core, and know nothing of Optuna: rows are keyed by study name and trial
number. The store's manifest says whether a checkpoint is committed; a row says what it is for.

Checkpoint rows move through: pending (planned, being written) -> committed -> deleting -> deleted
(or pending -> failed when the write never committed). A row is marked `deleting` before any file
goes, so a crash during garbage collection never leaves a half-deleted checkpoint that is still
listed as loadable, and a rerun finishes the job.

Attempts: every run of a trial by a process holds a random token. A worker that was wrongly
declared dead finds its token superseded and must not commit (`owns`).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from hpsearch.checkpoint.format import check_id
from hpsearch.checkpoint.procs import pid_alive

WARMUP = -1  # the pseudo trial number of the warm-up
WORKERS = -2  # the pseudo trial number of worker presence rows (one per running worker)

_meta = sa.MetaData()

checkpoints = sa.Table(
    "hpsearch_checkpoints",
    _meta,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("study", sa.String(255), nullable=False, index=True),
    sa.Column("trial", sa.Integer, nullable=False),  # WARMUP for the warm-up
    sa.Column("attempt", sa.String(40), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),  # warmup | base | trial | final
    sa.Column("parent", sa.String(80), nullable=True),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.Float, nullable=False),
    sa.Column("nbytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)

attempts = sa.Table(
    "hpsearch_attempts",
    _meta,
    sa.Column("token", sa.String(40), primary_key=True),
    sa.Column("study", sa.String(255), nullable=False, index=True),
    sa.Column("trial", sa.Integer, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running | done | dead
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("start_step", sa.BigInteger, nullable=False, default=0),  # where it began
    sa.Column("steps", sa.BigInteger, nullable=False, default=0),  # steps it trained (so far)
    sa.Column("samples", sa.BigInteger, nullable=False, default=0),  # samples it trained
    sa.Column("resumed_from", sa.String(80), nullable=True),
)

claims = sa.Table(
    "hpsearch_claims",
    _meta,
    sa.Column("study", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("token", sa.String(40), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

LIVE = ("pending", "committed")


@dataclass(frozen=True)
class CheckpointRow:
    id: str
    study: str
    trial: int
    attempt: str | None
    kind: str
    parent: str | None
    step: int
    samples: int
    epoch: float
    nbytes: int
    status: str
    created: float
    updated: float


@dataclass(frozen=True)
class AttemptRow:
    token: str
    study: str
    trial: int
    host: str
    pid: int
    status: str
    started: float
    heartbeat: float
    start_step: int
    steps: int
    samples: int
    resumed_from: str | None


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        # the Optuna study writes to the same file from the same process: wait, don't fail
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # see hpsearch.search.session.fast_sqlite
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Lineage:
    """The checkpoint tree and attempts of one study in a database given by SQLAlchemy URL."""

    def __init__(self, url: str, study: str) -> None:
        self.url = url
        self.study = study
        self.engine = _engine(url)
        self._warned: set[str] = set()
        _meta.create_all(self.engine, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- checkpoints -------------------------------------------------------------------------

    def plan(
        self,
        ckpt_id: str,
        *,
        trial: int,
        kind: str,
        parent: str | None,
        step: int,
        samples: int,
        epoch: float,
        attempt: str | None = None,
    ) -> None:
        """Record a checkpoint about to be written (status `pending`)."""
        now = time.time()
        with self.engine.begin() as c:
            c.execute(
                checkpoints.insert().values(
                    id=ckpt_id, study=self.study, trial=trial, attempt=attempt, kind=kind,
                    parent=parent, step=step, samples=samples, epoch=epoch, nbytes=0,
                    status="pending", created=now, updated=now,
                )
            )  # fmt: skip

    def set_status(
        self, ckpt_id: str, status: str, *, nbytes: int | None = None, kind: str | None = None
    ) -> None:
        values: dict[str, Any] = {"status": status, "updated": time.time()}
        if nbytes is not None:
            values["nbytes"] = nbytes
        if kind is not None:
            values["kind"] = kind
        with self.engine.begin() as c:
            c.execute(checkpoints.update().where(checkpoints.c.id == ckpt_id).values(**values))

    def get(self, ckpt_id: str) -> CheckpointRow | None:
        with self.engine.connect() as c:
            row = c.execute(checkpoints.select().where(checkpoints.c.id == ckpt_id)).first()
        return CheckpointRow(**row._mapping) if row else None

    def checkpoints(
        self,
        *,
        trial: int | None = None,
        statuses: tuple[str, ...] | None = None,
        kinds: tuple[str, ...] | None = None,
    ) -> list[CheckpointRow]:
        """Rows of this study, oldest first (by step, then creation)."""
        q = checkpoints.select().where(checkpoints.c.study == self.study)
        if trial is not None:
            q = q.where(checkpoints.c.trial == trial)
        if statuses is not None:
            q = q.where(checkpoints.c.status.in_(statuses))
        if kinds is not None:
            q = q.where(checkpoints.c.kind.in_(kinds))
        q = q.order_by(checkpoints.c.trial, checkpoints.c.step, checkpoints.c.created)
        with self.engine.connect() as c:
            rows = [CheckpointRow(**r._mapping) for r in c.execute(q)]
        return [r for r in rows if self._valid(r)]

    def invalid_ids(self, *, statuses: tuple[str, ...] | None = None) -> list[str]:
        """Ids of rows that `checkpoints()` leaves out because they are not valid ids."""
        q = sa.select(checkpoints.c.id).where(checkpoints.c.study == self.study)
        if statuses is not None:
            q = q.where(checkpoints.c.status.in_(statuses))
        with self.engine.connect() as c:
            ids = [r[0] for r in c.execute(q)]
        out = []
        for ckpt_id in ids:
            try:
                check_id(ckpt_id)
            except ValueError:
                out.append(ckpt_id)
        return out

    def _valid(self, row: CheckpointRow) -> bool:
        """A row whose id could not be a path in the store (hand-edited or damaged database) is
        left out with one warning: no caller may turn it into a path or delete by it."""
        try:
            check_id(row.id)
        except ValueError as exc:
            if row.id not in self._warned:
                self._warned.add(row.id)
                print(f"warning: skipping a checkpoint row of study {self.study!r}: {exc}",
                      file=sys.stderr)  # fmt: skip
            return False
        return True

    # -- attempts ----------------------------------------------------------------------------

    def start_attempt(self, trial: int, *, resumed_from: str | None = None) -> str:
        """Register this process as the runner of `trial`; returns its token."""
        token = secrets.token_hex(8)
        now = time.time()
        with self.engine.begin() as c:
            c.execute(
                attempts.insert().values(
                    token=token, study=self.study, trial=trial, host=socket.gethostname(),
                    pid=os.getpid(), status="running", started=now, heartbeat=now, start_step=0,
                    steps=0, samples=0, resumed_from=resumed_from,
                )
            )  # fmt: skip
        return token

    def claim(self, key: str) -> bool:
        """Take a study-wide one-time claim (e.g. "retry:7"); True for the first taker only."""
        try:
            with self.engine.begin() as c:
                c.execute(
                    claims.insert().values(
                        study=self.study, key=key, token=secrets.token_hex(8), created=time.time()
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def take_over(
        self, trial: int, old_token: str | None, *, resumed_from: str | None
    ) -> str | None:
        """Declare the attempt `old_token` dead and start ours, atomically: of two workers that
        try at once, one gets a token and the other None."""
        with self.engine.begin() as c:
            if old_token is not None:
                done = c.execute(
                    attempts.update()
                    .where(attempts.c.token == old_token, attempts.c.status == "running")
                    .values(status="dead")
                )
                if done.rowcount != 1:
                    return None
            elif self.current_attempt(trial, conn=c) is not None:
                return None
        return self.start_attempt(trial, resumed_from=resumed_from)

    def heartbeat(
        self,
        token: str,
        *,
        steps: int | None = None,
        samples: int | None = None,
        start_step: int | None = None,
    ) -> bool:
        """Refresh a running attempt and its counts; False when it was taken over (stop)."""
        values: dict[str, Any] = {"heartbeat": time.time()}
        for key, value in (("steps", steps), ("samples", samples), ("start_step", start_step)):
            if value is not None:
                values[key] = value
        with self.engine.begin() as c:
            done = c.execute(
                attempts.update()
                .where(attempts.c.token == token, attempts.c.status == "running")
                .values(**values)
            )
        return done.rowcount == 1

    def owns(self, token: str) -> bool:
        with self.engine.connect() as c:
            row = c.execute(sa.select(attempts.c.status).where(attempts.c.token == token)).first()
        return row is not None and row[0] == "running"

    def finish_attempt(self, token: str, status: str = "done") -> None:
        with self.engine.begin() as c:
            c.execute(
                attempts.update()
                .where(attempts.c.token == token, attempts.c.status == "running")
                .values(status=status, heartbeat=time.time())
            )

    def current_attempt(
        self, trial: int, *, conn: sa.Connection | None = None
    ) -> AttemptRow | None:
        q = (
            attempts.select()
            .where(
                attempts.c.study == self.study,
                attempts.c.trial == trial,
                attempts.c.status == "running",
            )
            .order_by(attempts.c.started.desc())
        )
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.engine.connect() as c:
                row = c.execute(q).first()
        return AttemptRow(**row._mapping) if row else None

    def attempts(self, trial: int | None = None) -> list[AttemptRow]:
        q = attempts.select().where(attempts.c.study == self.study)
        if trial is not None:
            q = q.where(attempts.c.trial == trial)
        with self.engine.connect() as c:
            return [AttemptRow(**r._mapping) for r in c.execute(q.order_by(attempts.c.started))]


def attempt_is_stale(row: AttemptRow, *, grace_s: float, now: float | None = None) -> bool:
    """A running attempt is stale when its heartbeat is older than the grace period, or at once
    when it ran on this host and its process is gone."""
    now = time.time() if now is None else now
    if row.host == socket.gethostname() and not pid_alive(row.pid):
        return True
    return now - row.heartbeat > grace_s
