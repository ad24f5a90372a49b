"""The lineage's tables, and opening a study database: its URL, its engine, its schema.

The tables live in the same database as the Optuna study and are created on first use; their
layout is the on-disk format and does not change without a migration (new tables may be added:
an older database gets them on its next open).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from hpsearch.errors import UsageError
from hpsearch.lineage.journal import check_journal_place, journal_file, lineage_url

T = TypeVar("T")

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

pins = sa.Table(  # a checkpoint held by an attempt about to fork from it, until `expires`
    "hpsearch_pins",
    _meta,
    sa.Column("study", sa.String(255), primary_key=True),
    sa.Column("ckpt", sa.String(80), primary_key=True),
    sa.Column("token", sa.String(40), primary_key=True),
    sa.Column("expires", sa.Float, nullable=False),
)

leases = sa.Table(  # a study-wide lease (e.g. "gc"): one holder until `expires`
    "hpsearch_leases",
    _meta,
    sa.Column("study", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("token", sa.String(40), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)

SCHEMA_LOCK = int.from_bytes(b"hpsearch", "big")
"""The PostgreSQL advisory-lock key that serialises creating the lineage's tables (a fixed bigint),
taken for one transaction only (`pg_advisory_xact_lock`), so it works through a pooler."""

POOL_SIZE = 3
"""The most connections one process holds to a PostgreSQL study database (its engine's pool, shared
by Optuna and the lineage): the training thread, the heartbeat thread and a checkpoint's
background save may each hold one at once; a fourth user waits for one to come back. N workers
hold at most 3 N connections (fewer in practice: see the README's sizing)."""

POOL_WAIT_S = 300.0
"""How long a thread waits for one of the `POOL_SIZE` connections before it fails: long, since
the other users hold theirs for one short transaction each."""

_DRIVERS = {"psycopg": "psycopg", "psycopg2": "psycopg2"}  # SQLAlchemy driver -> module
_NO_DRIVER = (
    "no PostgreSQL driver is installed: pip install 'hpsearch[postgres]' (psycopg 3), then run "
    "the command again"
)


def _importable(module: str) -> bool:
    """Without importing it (psycopg2 costs a fraction of a second, and may be broken)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: known not to be importable
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def database_url(url: str) -> str:
    """The SQLAlchemy URL to open for a storage URL as a user types it: `postgresql://` and
    `postgres://` get the psycopg 3 driver (`postgresql+psycopg://`) when psycopg 3 is
    installed and psycopg2 (SQLAlchemy's default) is not. A PostgreSQL URL with no driver
    installed is a UsageError that names the extra to install. A journal (`journal:///path`)
    gives the SQLite database of its lineage, beside it. Other URLs are left as they are."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if journal_file(url) is not None:
        return lineage_url(url)
    dialect, _, driver = scheme.partition("+")
    if dialect.lower() not in ("postgresql", "postgres"):
        return url
    if driver:
        if driver in _DRIVERS and not _importable(_DRIVERS[driver]):
            raise UsageError(f"storage {_shown(url)}: driver {driver!r}: {_NO_DRIVER}")
        return f"postgresql+{driver}://{rest}"
    if _importable("psycopg2"):
        return f"postgresql://{rest}"  # SQLAlchemy's default; it refuses `postgres://`
    if _importable("psycopg"):
        return f"postgresql+psycopg://{rest}"
    raise UsageError(f"storage {_shown(url)}: {_NO_DRIVER}")


def _shown(url: str) -> str:
    """`url` as an error message may show it: without its password."""
    try:
        return repr(sa.engine.make_url(url).render_as_string(hide_password=True))
    except Exception:  # not a URL SQLAlchemy can parse: nothing to hide in a way we know
        return repr(url)


def engine_kwargs(url: str) -> dict[str, Any]:
    """`create_engine` arguments for a study database (also Optuna's `engine_kwargs`).

    PostgreSQL: a pool of at most `POOL_SIZE` connections, each checked before use (a pooler
    or a restarted server may have closed it), and, with psycopg 3, no server-side prepared
    statements: psycopg prepares a query it ran 5 times on the connection it ran on, and a
    pooler in transaction mode (PgBouncer's `pool_mode = transaction`) gives the next
    transaction another server connection, which does not know it ("prepared statement
    _pg3_0 does not exist"). Unprepared, a query costs one parse more, nothing a study sees.
    Each connection says whose it is (`application_name`: hpsearch, the host and the pid), unless
    the URL names it."""
    if url.startswith("sqlite"):
        # the Optuna study writes to the same file from the same process: wait, don't fail
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if not url.startswith("postgresql"):
        return kwargs
    kwargs |= {"pool_size": POOL_SIZE, "max_overflow": 0, "pool_timeout": POOL_WAIT_S}
    connect: dict[str, Any] = {}
    if "application_name" not in url:  # which worker holds a connection, in pg_stat_activity
        connect["application_name"] = f"hpsearch {socket.gethostname()}:{os.getpid()}"[:63]
    if url.startswith("postgresql+psycopg:"):
        connect["prepare_threshold"] = None
    if connect:
        kwargs["connect_args"] = connect
    return kwargs


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
    """An engine for a study database, configured as `SqlLineage` needs it; for a journal, on
    the lineage's database beside it, once its file system is found safe for both."""
    journal = journal_file(url)
    if journal is not None:
        check_journal_place(journal)
    url = database_url(url)
    engine = sa.create_engine(url, **engine_kwargs(url))
    configure_sqlite(engine)
    return engine


def _lost_schema_race(exc: BaseException) -> bool:
    """Did another process create a table (or stamp a version) between our check and ours?"""
    return (
        isinstance(exc, sa.exc.IntegrityError) or "already exists" in str(exc) or sqlite_busy(exc)
    )


def sqlite_busy(exc: BaseException) -> bool:
    """Is this (or what caused it) sqlite's "database is locked"? sqlite answers it at once,
    without waiting out its busy timeout, where waiting could deadlock: to a connection that
    read (or switched the file to WAL) while another one wrote -- several workers opening a
    brand-new study database at one moment. Running the transaction again is the cure."""
    cur: BaseException | None = exc
    while cur is not None:
        if "database is locked" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def retry_if_busy(fn: Callable[[], T], *, tries: int = 50, at_once_s: float = 5.0) -> T:
    """`fn()`, run again (with a growing pause) while sqlite refuses it at once with "database
    is locked". A refusal that came after waiting out the busy timeout (another process holds
    the file for a minute) is raised as it is: running it again would only wait again."""
    for attempt in itertools.count(1):
        began = time.monotonic()
        try:
            return fn()
        except Exception as exc:
            at_once = time.monotonic() - began < at_once_s
            if attempt >= tries or not at_once or not sqlite_busy(exc):
                raise
        time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover  (for mypy: count() never ends)


def create_schema(target: str | sa.Engine, create: Callable[[], T], *, tries: int = 20) -> T:
    """`create()` (which creates tables if missing, checking first, as Optuna's `RDBStorage(...)`
    and `create_lineage_schema` do) made race-free against other processes doing the same, by
    running it again when another creator won a race: it then finds what the other made. Each
    creation is a transaction of its own (DDL is transactional on PostgreSQL), so a lost race
    leaves nothing half-made. No lock is held across transactions: a session-level lock would
    stay with whichever server connection a pooler in transaction mode gave it, and hang every
    later opener. (`target` names the database; kept for the callers' symmetry.)"""
    for attempt in itertools.count(1):
        try:
            return create()
        except sa.exc.SQLAlchemyError as exc:
            if attempt >= tries or not _lost_schema_race(exc):
                raise
        time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover  (for mypy: count() never ends)


def create_lineage_schema(engine: sa.Engine) -> None:
    """The lineage's tables on `engine`'s database, those missing created, race-free: on
    PostgreSQL in one transaction under a transaction-scoped advisory lock (the openers then
    take turns, and a pooler in transaction mode keeps the lock and the tables on one server
    connection), everywhere run again if another creator won a race."""

    def create() -> None:
        with engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
            _meta.create_all(c, checkfirst=True)

    create_schema(engine, create)
