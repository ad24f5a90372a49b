"""PostgreSQL as the study database, on a throwaway server (tests/pgserver.py): the URL as users
type it, the driver's error, race-free schema creation (on sqlite too), and a study run by four
workers at once. The lineage's own rules and races run in tests/test_lineage_conformance.py."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.config import load_study_file
from hpsearch.errors import UsageError
from hpsearch.lineage import (
    WARMUP,
    WORKERS,
    SqlLineage,
    database_url,
    open_lineage,
    retry_if_busy,
)
from hpsearch.search import session as session_mod
from hpsearch.search.session import Session
from pgserver import skip_unless_installed
from studyutil import ROOT, write_study

NO_DRIVER = "pip install 'hpsearch[postgres]'"


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make `modules` not importable, as on an install without them (find_spec -> None)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


# -- the URL and its driver -------------------------------------------------------------------


def test_a_postgresql_url_gets_the_installed_driver(monkeypatch):
    _hide(monkeypatch, "psycopg2")  # as here: psycopg 3 only
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("postgres://u:pw@h:5433/db?sslmode=require") == (
        "postgresql+psycopg://u:pw@h:5433/db?sslmode=require"
    )
    assert database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    for url in ("sqlite:///a/b.db", "mysql://u@h/db", "not a url"):
        assert database_url(url) == url
    with pytest.raises(UsageError, match="driver 'psycopg2'.*" + NO_DRIVER.replace("[", r"\[")):
        database_url("postgresql+psycopg2://u@h/db")


def test_psycopg2_when_installed_keeps_sqlalchemys_default(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "psycopg2", types.ModuleType("psycopg2"))  # installed
    assert database_url("postgres://u@h/db") == "postgresql://u@h/db"
    assert database_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_no_driver_is_a_usage_error_that_names_the_extra(tmp_path, monkeypatch, capsys):
    """On a fresh install, `--storage postgresql://...` stopped at `ImportError: Failed to
    import DB access module`; now it exits 2 with the fix, the password not shown."""
    _hide(monkeypatch, "psycopg", "psycopg2")
    with pytest.raises(UsageError, match=r"no PostgreSQL driver.*hpsearch\[postgres\]"):
        database_url("postgresql://u@h/db")
    path = write_study(tmp_path)
    url = "postgresql://alice:s3cret@127.0.0.1:1/db"
    assert main(["run", path, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert NO_DRIVER in err and "s3cret" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "runs")  # nothing was made
    with pytest.raises(UsageError, match=r"hpsearch\[postgres\]"):
        open_lineage(url, "s")


def test_a_session_opens_on_a_plain_postgresql_url(tmp_path, postgres_db):
    """The URL as users type it: Optuna's storage and the lineage share one psycopg 3 engine."""
    assert postgres_db.startswith("postgresql://")
    path = write_study(tmp_path)
    s = Session.open(path, storage=postgres_db)
    assert isinstance(s.lineage, SqlLineage) and s.lineage.engine is s._engine
    assert s.lineage.engine.url.drivername == "postgresql+psycopg"
    token = s.lineage.take_over(WARMUP, None, resumed_from=None)
    trial = s.study.ask()
    assert token is not None and s.lineage.take_over(WARMUP, None, resumed_from=None) is None
    s.study.tell(trial, 0.5)
    s.close()
    again = Session.open(path, storage=postgres_db, create=False)
    assert again.study.best_value == 0.5
    assert (c := again.lineage.current_attempt(WARMUP)) is not None and c.token == token
    again.close()


# -- creating the schema, race-free -----------------------------------------------------------

OPENERS = 6


def _open_at_once(settings: Any, url: str) -> list[BaseException]:
    """OPENERS threads, each as its own `hpsearch run` (its own engines), open the same brand-new
    study at one moment (a Barrier): Optuna's tables, the study, the lineage's tables."""
    barrier = threading.Barrier(OPENERS)
    errors: list[BaseException] = []
    opened: list[Any] = []

    def open_study() -> None:
        try:
            barrier.wait()
            storage, engine = session_mod._storage(settings, url, create=True)
            study = session_mod._study(settings, storage, "fresh", url, create=True, classic=False)
            lin = open_lineage(url, "fresh", engine=engine)
            opened.append((engine, study, lin))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_study) for _ in range(OPENERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {study._study_id for _, study, _ in opened}
    assert errors or (len(opened) == OPENERS and len(ids) == 1)  # one study, opened by all
    for engine, _, lin in opened:
        lin.close()
        engine.dispose()
    return errors


def test_a_new_study_opened_at_once_on_sqlite(tmp_path):
    settings = load_study_file(write_study(tmp_path))
    for i in range(2):
        url = f"sqlite:///{tmp_path}/fresh{i}.db"
        assert _open_at_once(settings, url) == []
        engine = sa.create_engine(url)
        assert {"studies", "hpsearch_attempts", "hpsearch_pins"} <= set(
            sa.inspect(engine).get_table_names()
        )
        engine.dispose()


def test_a_new_study_opened_at_once_on_postgres(tmp_path, postgres_server):
    """Without the schema lock, one of them exited 2 with "table studies already exists ...
    check the URL" (Optuna's create_all), or failed on ours."""
    settings = load_study_file(write_study(tmp_path))
    for _ in range(2):
        url = postgres_server.create_database()
        assert _open_at_once(settings, url) == []
        assert len(optuna.get_all_study_names(database_url(url))) == 1


# -- a study run by four workers ----------------------------------------------------------------


@pytest.mark.slow
def test_four_workers_finish_a_study_on_postgres(tmp_path, postgres_db):
    """`hpsearch run --workers 4 --storage postgresql://...` on a brand-new database: every trial
    finished exactly once, one warm-up, and the tree matches the files."""
    path = write_study(
        tmp_path, name="pg4",
        warmup={"epochs": 0.5, "hparams": {"lr": 1e-2, "batch_size": 64, "hidden": 32,
                                           "dropout": 0.1, "weight_decay": 0.0}},
        trials={"n": 8, "epochs": 0.25, "eval_every": 0.25},
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # four processes on two cores
    cmd = [sys.executable, "-m", "hpsearch", "run", path, "--workers", "4",
           "--storage", postgres_db]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    out = proc.stdout[-3000:] + "\n--- stderr:\n" + proc.stderr[-5000:]
    assert proc.returncode == 0, out
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr.lower(), out
    s = Session.open(path, storage=postgres_db, create=False)
    try:
        trials = s.study.get_trials()
        n = len(trials)
        assert n == 8  # asking is one step for the study: no worker asks a 9th
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        assert sorted(t.number for t in trials) == list(range(n))
        assert [t.number for t in trials if t.state not in finished] == []
        attempts = s.lineage.attempts()
        # all four joined (a late one finds the study done, and leaves)
        assert len({a.pid for a in attempts if a.trial == WORKERS}) == 4, out
        assert [a.status for a in attempts if a.trial == WARMUP] == ["done"]
        done = Counter(a.trial for a in attempts if a.status == "done" and a.trial >= 0)
        assert done == Counter(range(n)), "each trial run to its end exactly once"
        assert [a for a in attempts if a.status == "running"] == []
        committed = {r.id for r in s.lineage.checkpoints(statuses=("committed",))}
        assert committed and len(s.lineage.checkpoints(kinds=("base",))) == 1
        for ckpt_id in committed:
            s.store.verify(ckpt_id)  # exists, hashes and parses
        assert {info.id for info in s.store.list()} == committed  # no file without a row
        assert s.store.leftovers() == []
        assert f"study pg4: {n} finished trials" in proc.stdout
    finally:
        s.close()


def test_sqlite_refusing_at_once_is_asked_again_and_nothing_else_is():
    """What `create_study` meets above: sqlite's "database is locked" said at once is tried
    again; any other error, or a refusal after waiting out the busy timeout, is raised."""
    calls = []

    def refused_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("commit failed") from sqlite3.OperationalError("database is locked")
        return "done"

    assert retry_if_busy(refused_twice) == "done" and len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a lock")

    calls.clear()
    with pytest.raises(ValueError):
        retry_if_busy(broken)
    assert len(calls) == 1

    def waited() -> None:
        calls.append(1)
        time.sleep(0.06)
        raise sqlite3.OperationalError("database is locked")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError):
        retry_if_busy(waited, at_once_s=0.05)
    assert len(calls) == 1


# -- through PgBouncer in transaction mode -------------------------------------------------------


def test_a_new_study_opened_at_once_through_pgbouncer(tmp_path, postgres_server, pgbouncer):
    """Six openers of a brand-new study through a pooler in transaction mode. Before: the
    schema lock was a session-level advisory lock, which stayed with whichever server connection
    PgBouncer had lent, so the openers hung or failed ("An exception is raised during the
    commit")."""
    settings = load_study_file(write_study(tmp_path))
    for _ in range(2):
        url = pgbouncer.url(postgres_server.create_database())
        assert _open_at_once(settings, url) == []
        assert len(optuna.get_all_study_names(database_url(url))) == 1


def test_under_ci_a_missing_server_binary_fails_instead_of_skipping(monkeypatch):
    """CI must not pass by skipping the PostgreSQL, PgBouncer and S3 tests."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-binary not on the PATH"):
        skip_unless_installed("X", ("no-such-binary",), "install it")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must not pass by skipping"):
        skip_unless_installed("X", ("no-such-binary",), "install it")
    skip_unless_installed("X", ("sh",), "install it")  # present: neither
