"""The lineage in tables beside the Optuna study, through SQLAlchemy Core.

They live in the same database as the study (sqlite by default, PostgreSQL for many machines)
and, given Optuna's engine (`optuna.storages.RDBStorage(url).engine`), share its connection
pool: one engine per database per process. The store's manifest says whether a checkpoint is
committed; a row says what it is for. The tables are created on first use; their layout is the
on-disk format and does not change without a migration.
"""

from __future__ import annotations

import contextlib
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
    attempt_is_stale,
    invalid_id_reason,
    keep_valid,
)
from hpsearch.lineage.schema import (
    attempts,
    checkpoints,
    claims,
    create_engine,
    create_lineage_schema,
    database_url,
    leases,
    pins,
)

if TYPE_CHECKING:
    from hpsearch.lineage.protocol import Lineage


def _lock_trial(conn: sa.Connection, study: str, trial: int) -> None:
    """Serialise the check-then-insert of a takeover of `trial` with every other one, up to the
    end of the transaction of `conn`, without a schema change. sqlite: take the database's write
    lock before the check (readers go on). PostgreSQL: a transaction-scoped advisory lock on
    (study, trial), which a plain SELECT cannot give where no row exists yet."""
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
    """The lineage of one study in a database given by SQLAlchemy URL (or a journal storage's
    `journal:///path`: the SQLite database beside the journal), or by an engine opened on it
    (which then stays the caller's: `close` leaves it open)."""

    def __init__(self, url: str, study: str, *, engine: sa.Engine | None = None) -> None:
        self.url = database_url(url)
        self._study = study
        self._owns_engine = engine is None
        self.engine = create_engine(url) if engine is None else engine
        self._warned: set[str] = set()
        create_lineage_schema(self.engine)

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

    def withdraw(self, token: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                attempts.delete().where(
                    attempts.c.study == self.study,
                    attempts.c.token == token,
                    attempts.c.status == "running",
                )
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

    # -- pins, leases, stale attempts --------------------------------------------------------

    def pin(self, ckpt_id: str, token: str, *, ttl_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        row = {"study": self.study, "ckpt": ckpt_id, "token": token, "expires": now + ttl_s}
        with self.engine.begin() as c:
            _upsert(c, pins, row, keys=("study", "ckpt", "token"))
        # expired pins of the study (of killed workers too) go as new ones come, so the table
        # stays small; in a transaction of its own, which holds no other lock, and skipped when
        # it loses to a concurrent one (a deadlock, a busy database): the next pin does it
        expired = pins.delete().where(pins.c.study == self.study, pins.c.expires <= now)
        with contextlib.suppress(sa.exc.OperationalError), self.engine.begin() as c:
            c.execute(expired)

    def unpin(self, ckpt_id: str, token: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                pins.delete().where(
                    pins.c.study == self.study, pins.c.ckpt == ckpt_id, pins.c.token == token
                )
            )

    def pinned(self, *, now: float | None = None) -> set[str]:
        now = time.time() if now is None else now
        q = sa.select(pins.c.ckpt).where(pins.c.study == self.study, pins.c.expires > now)
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(q)}

    def take_lease(self, key: str, token: str, *, ttl_s: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        # one statement: insert, or take over a row that expired or is ours; of two takers at
        # once the database lets one in and the other finds the row held (0 rows changed)
        with self.engine.begin() as c:
            row = {"study": self.study, "key": key, "token": token, "expires": now + ttl_s}
            free = sa.or_(leases.c.expires <= now, leases.c.token == token)
            taken = _upsert(c, leases, row, keys=("study", "key"), where=free)
        return taken

    def release_lease(self, key: str, token: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                leases.delete().where(
                    leases.c.study == self.study, leases.c.key == key, leases.c.token == token
                )
            )

    def release_orphan_leases(self) -> int:
        ended = sa.select(attempts.c.token).where(
            attempts.c.study == self.study, attempts.c.status != "running"
        )
        with self.engine.begin() as c:
            done = c.execute(
                leases.delete().where(leases.c.study == self.study, leases.c.token.in_(ended))
            )
        return int(done.rowcount or 0)

    def close_stale_attempts(self, *, grace_s: float, now: float | None = None) -> int:
        running = attempts.select().where(
            attempts.c.study == self.study, attempts.c.status == "running"
        )
        with self.engine.connect() as c:
            rows = [AttemptRow(**r._mapping) for r in c.execute(running)]
        closed = 0
        for row in rows:
            if not attempt_is_stale(row, grace_s=grace_s, now=now):
                continue
            with self.engine.begin() as c:
                # only as we saw it: an attempt that beat since then proved it lives
                done = c.execute(
                    attempts.update()
                    .where(
                        attempts.c.token == row.token,
                        attempts.c.status == "running",
                        attempts.c.heartbeat == row.heartbeat,
                    )
                    .values(status="dead")
                )
            closed += done.rowcount
        return closed


def _upsert(
    c: sa.Connection,
    table: sa.Table,
    values: dict[str, Any],
    *,
    keys: tuple[str, ...],
    where: sa.ColumnElement[bool] | None = None,
) -> bool:
    """Insert `values`, or on a conflict of `keys` update the other columns of the row there
    (only where `where` holds of it): one atomic statement on sqlite (3.35+) and PostgreSQL.
    Whether it inserted or updated the row (by RETURNING: psycopg gives no rowcount here)."""
    insert: Any
    if c.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif c.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"hpsearch supports sqlite and PostgreSQL, not {c.dialect.name}")
    stmt = insert(table).values(**values)
    update = {k: stmt.excluded[k] for k in values if k not in keys}
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_=update, where=where)
    return c.execute(stmt.returning(table.c[keys[0]])).first() is not None


def open_lineage(url: str, study: str, *, engine: sa.Engine | None = None) -> Lineage:
    """The lineage of `study` in the database at `url` (as a user types it: see
    `database_url`); pass the engine already open on it (Optuna's `RDBStorage(url).engine`,
    after `configure_sqlite`) to share its pool."""
    return SqlLineage(url, study, engine=engine)


if TYPE_CHECKING:
    _: Lineage = SqlLineage("sqlite://", "conformance")  # mypy: SqlLineage fits the Protocol
