"""The lineage in tables beside the Optuna study, through SQLAlchemy Core.

They live in the same database as the study (sqlite by default, PostgreSQL for many machines)
and, given Optuna's engine (`optuna.storages.RDBStorage(url).engine`), share its connection
pool: one engine per database per process. The store's manifest says whether a checkpoint is
committed; a row says what it is for. The tables are created on first use; their layout is the
on-disk format and does not change without a migration.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from hpsearch.lineage.model import (
    AttemptRow,
    AttemptStatus,
    CheckpointKind,
    CheckpointRow,
    CheckpointStatus,
    DuplicateCheckpoint,
    invalid_id_reason,
    keep_valid,
)

if TYPE_CHECKING:
    from hpsearch.lineage.protocol import Lineage

_meta = sa.MetaData()

checkpoints = sa.Table(
    "hpsearch_checkpoints",
    _meta,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("study", sa.String(255), nullable=False, index=True),
    sa.Column("trial", sa.Integer, nullable=False),  # WARMUP for the warm-up
    sa.Column("attempt", sa.String(40), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),  # CheckpointKind
    sa.Column("parent", sa.String(80), nullable=True),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.Float, nullable=False),
    sa.Column("nbytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("status", sa.String(16), nullable=False),  # CheckpointStatus
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
    sa.Column("status", sa.String(16), nullable=False),  # AttemptStatus
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("start_step", sa.BigInteger, nullable=False, default=0),
    sa.Column("steps", sa.BigInteger, nullable=False, default=0),
    sa.Column("samples", sa.BigInteger, nullable=False, default=0),
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


def engine_kwargs(url: str) -> dict[str, Any]:
    """`create_engine` arguments for a study database (also Optuna's `engine_kwargs`)."""
    if url.startswith("sqlite"):
        # the Optuna study writes to the same file from the same process: wait, don't fail
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def configure_sqlite(engine: sa.Engine) -> None:
    """Write-ahead logging with `synchronous=NORMAL` on every connection of a sqlite engine (any
    other engine is left as it is; calling twice changes nothing). A commit no longer waits for
    an fsync (about 5 ms -> well under 1 ms each), yet a killed process loses nothing that was
    committed; only a power cut can lose the last commits, never corrupt the file. hpsearch
    reports every evaluation, so this is most of a trial's bookkeeping time."""
    if engine.dialect.name != "sqlite" or sa.event.contains(engine, "connect", _sqlite_pragmas):
        return
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    engine.dispose()  # connections made before the listener get the pragmas too


def create_engine(url: str) -> sa.Engine:
    """An engine for a study database, configured as `SqlLineage` needs it."""
    engine = sa.create_engine(url, **engine_kwargs(url))
    configure_sqlite(engine)
    return engine


def _lock_trial(conn: sa.Connection, study: str, trial: int) -> None:
    """Serialise the check-then-insert of a takeover of `trial` with every other one, up to the
    end of the transaction of `conn`, without a schema change. sqlite: take the database's write
    lock before the check (readers go on). PostgreSQL: a transaction-scoped advisory lock on
    (study, trial), which a plain SELECT cannot give where no row exists yet (not yet run
    against a server: issue 15 adds the PostgreSQL conformance run)."""
    name = conn.dialect.name
    if name == "sqlite":
        # pysqlite opens its transaction lazily at the first write; open it now, as a writer
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:study), :trial)"),
            {"study": study, "trial": trial},
        )
    # other databases (not supported by hpsearch) keep the check and the insert in one
    # transaction under their own isolation level, which may not serialise them


class SqlLineage:
    """The lineage of one study in a database given by SQLAlchemy URL, or by an engine opened
    on it (which then stays the caller's: `close` leaves it open)."""

    def __init__(self, url: str, study: str, *, engine: sa.Engine | None = None) -> None:
        self.url = url
        self._study = study
        self._owns_engine = engine is None
        self.engine = create_engine(url) if engine is None else engine
        self._warned: set[str] = set()
        _meta.create_all(self.engine, checkfirst=True)

    @property
    def study(self) -> str:
        return self._study

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

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
        try:
            with self.engine.begin() as c:
                c.execute(
                    checkpoints.insert().values(
                        id=ckpt_id, study=self.study, trial=trial, attempt=attempt, kind=kind,
                        parent=parent, step=step, samples=samples, epoch=epoch, nbytes=0,
                        status="pending", created=now, updated=now,
                    )
                )  # fmt: skip
        except sa.exc.IntegrityError:
            raise DuplicateCheckpoint(f"checkpoint id {ckpt_id!r} is a row already") from None

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
        with self.engine.begin() as c:
            c.execute(checkpoints.update().where(self._ckpt(ckpt_id)).values(**values))

    def get(self, ckpt_id: str) -> CheckpointRow | None:
        with self.engine.connect() as c:
            row = c.execute(checkpoints.select().where(self._ckpt(ckpt_id))).first()
        return CheckpointRow(**row._mapping) if row else None

    def _ckpt(self, ckpt_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(checkpoints.c.id == ckpt_id, checkpoints.c.study == self.study)

    def checkpoints(
        self,
        *,
        trial: int | None = None,
        statuses: tuple[CheckpointStatus, ...] | None = None,
        kinds: tuple[CheckpointKind, ...] | None = None,
    ) -> list[CheckpointRow]:
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
        return keep_valid(rows, self._warned)

    def invalid_ids(self, *, statuses: tuple[CheckpointStatus, ...] | None = None) -> list[str]:
        q = sa.select(checkpoints.c.id).where(checkpoints.c.study == self.study)
        if statuses is not None:
            q = q.where(checkpoints.c.status.in_(statuses))
        with self.engine.connect() as c:
            ids = [r[0] for r in c.execute(q)]
        return [i for i in ids if invalid_id_reason(i) is not None]

    # -- attempts ----------------------------------------------------------------------------

    def start_attempt(self, trial: int, *, resumed_from: str | None = None) -> str:
        with self.engine.begin() as c:
            return self._insert_attempt(c, trial, resumed_from)

    def _insert_attempt(self, c: sa.Connection, trial: int, resumed_from: str | None) -> str:
        token = secrets.token_hex(8)
        now = time.time()
        c.execute(
            attempts.insert().values(
                token=token, study=self.study, trial=trial, host=socket.gethostname(),
                pid=os.getpid(), status="running", started=now, heartbeat=now, start_step=0,
                steps=0, samples=0, resumed_from=resumed_from,
            )
        )  # fmt: skip
        return token

    def take_over(
        self, trial: int, old_token: str | None, *, resumed_from: str | None
    ) -> str | None:
        # the check and the insert in one transaction under the trial's lock: of two workers
        # that both saw the trial free (or `old_token` stale), the second sees the first's row
        with self.engine.begin() as c:
            _lock_trial(c, self.study, trial)
            if old_token is not None:
                done = c.execute(
                    attempts.update()
                    .where(attempts.c.token == old_token, attempts.c.status == "running")
                    .values(status="dead")
                )
                if done.rowcount != 1:
                    return None
            elif self._current_attempt(c, trial) is not None:
                return None
            return self._insert_attempt(c, trial, resumed_from)

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

    def finish_attempt(self, token: str, status: AttemptStatus = "done") -> None:
        with self.engine.begin() as c:
            c.execute(
                attempts.update()
                .where(attempts.c.token == token, attempts.c.status == "running")
                .values(status=status, heartbeat=time.time())
            )

    def current_attempt(self, trial: int) -> AttemptRow | None:
        with self.engine.connect() as c:
            return self._current_attempt(c, trial)

    def _current_attempt(self, c: sa.Connection, trial: int) -> AttemptRow | None:
        q = (
            attempts.select()
            .where(
                attempts.c.study == self.study,
                attempts.c.trial == trial,
                attempts.c.status == "running",
            )
            .order_by(attempts.c.started.desc())
        )
        row = c.execute(q).first()
        return AttemptRow(**row._mapping) if row else None

    def attempts(self, trial: int | None = None) -> list[AttemptRow]:
        q = attempts.select().where(attempts.c.study == self.study)
        if trial is not None:
            q = q.where(attempts.c.trial == trial)
        with self.engine.connect() as c:
            return [AttemptRow(**r._mapping) for r in c.execute(q.order_by(attempts.c.started))]

    def claim(self, key: str) -> bool:
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


def open_lineage(url: str, study: str, *, engine: sa.Engine | None = None) -> Lineage:
    """The lineage of `study` in the database at `url`; pass the engine already open on it
    (Optuna's `RDBStorage(url).engine`, after `configure_sqlite`) to share its pool."""
    return SqlLineage(url, study, engine=engine)


if TYPE_CHECKING:
    _: Lineage = SqlLineage("sqlite://", "conformance")  # mypy: SqlLineage fits the Protocol
