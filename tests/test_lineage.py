"""What only the SQL lineage has (the rules of every backend are tests/test_lineage_conformance.py):
its on-disk tables, Optuna's engine shared, and a worker that was wrongly declared dead, which
must not commit over the one that took its trial over."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import optuna
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.lineage import (
    WARMUP,
    WORKERS,
    SqlLineage,
    configure_sqlite,
    engine_kwargs,
    open_lineage,
)
from hpsearch.search.session import Session
from studyutil import ROOT, write_study

SCHEMA = {  # the on-disk format: columns in order, as older databases have them
    "hpsearch_checkpoints": ["id", "study", "trial", "attempt", "kind", "parent", "step",
                             "samples", "epoch", "nbytes", "status", "created", "updated"],
    "hpsearch_attempts": ["token", "study", "trial", "host", "pid", "status", "started",
                          "heartbeat", "start_step", "steps", "samples", "resumed_from"],
    "hpsearch_claims": ["study", "key", "token", "created"],
    "hpsearch_pins": ["study", "ckpt", "token", "expires"],
    "hpsearch_leases": ["study", "key", "token", "expires"],
}  # fmt: skip
OLD_TABLES = ("hpsearch_checkpoints", "hpsearch_attempts", "hpsearch_claims")  # before issue 15


def test_the_tables_keep_their_on_disk_layout(tmp_path):
    db = tmp_path / "t.db"
    open_lineage(f"sqlite:///{db}", "s").close()
    con = sqlite3.connect(db)
    for table, columns in SCHEMA.items():
        assert [r[1] for r in con.execute(f"pragma table_info({table})")] == columns
    pks = {t: [r[1] for r in con.execute(f"pragma table_info({t})") if r[5]] for t in SCHEMA}
    assert pks == {"hpsearch_checkpoints": ["id"], "hpsearch_attempts": ["token"],
                   "hpsearch_claims": ["study", "key"], "hpsearch_pins": ["study", "ckpt", "token"],
                   "hpsearch_leases": ["study", "key"]}  # fmt: skip
    con.close()


def test_an_older_database_gets_the_new_tables_and_keeps_its_rows(tmp_path):
    """A database made before pins and leases existed: opening it adds their tables, and the
    older tables and rows stay as they were."""
    db = tmp_path / "old.db"
    lin = open_lineage(f"sqlite:///{db}", "s")
    lin.add_pending("ck-1", trial=0, kind="trial", parent=None, step=1, samples=8, epoch=0.1)
    token = lin.start_attempt(0)
    lin.close()
    con = sqlite3.connect(db)
    con.execute("drop table hpsearch_pins")
    con.execute("drop table hpsearch_leases")
    old_sql = dict(con.execute("select name, sql from sqlite_master where type='table'"))
    con.close()
    lin = open_lineage(f"sqlite:///{db}", "s")
    assert [r.id for r in lin.checkpoints()] == ["ck-1"] and lin.owns(token)
    lin.pin("ck-1", token, ttl_s=60)
    assert lin.pinned() == {"ck-1"} and lin.take_lease("gc", token, ttl_s=60)
    lin.close()
    con = sqlite3.connect(db)
    new_sql = dict(con.execute("select name, sql from sqlite_master where type='table'"))
    con.close()
    assert {t: new_sql[t] for t in OLD_TABLES} == {t: old_sql[t] for t in OLD_TABLES}
    assert {"hpsearch_pins", "hpsearch_leases"} <= set(new_sql)


def test_a_killed_workers_presence_row_is_closed_at_once(tmp_path):
    """Presence rows of killed workers stayed `running` forever (43 after 96 kills): a worker
    whose process is gone from this host is stale at once, whatever the grace period; a live
    one (this process) is not."""
    db = tmp_path / "t.db"
    lin = open_lineage(f"sqlite:///{db}", "s")
    alive = lin.start_attempt(WORKERS)
    # what a killed worker leaves: its running presence row (written here by a process that
    # then ends, without importing hpsearch, to keep the test fast)
    leave_row = (
        "import os, socket, sqlite3, sys, time\n"
        "con = sqlite3.connect(sys.argv[1], timeout=30)\n"
        "con.execute(\"insert into hpsearch_attempts values (?, 's', -2, ?, ?, 'running', "
        '?, ?, 0, 0, 0, NULL)", (sys.argv[2], socket.gethostname(), os.getpid(), '
        "time.time(), time.time()))\n"
        "con.commit()\n"
    )
    gone = ["gone-1", "gone-2"]
    for token in gone:
        subprocess.run([sys.executable, "-c", leave_row, str(db), token], check=True)
    assert {a.token for a in lin.attempts(WORKERS) if a.status == "running"} == {*gone, alive}
    assert lin.close_stale_attempts(grace_s=3600) == 2
    assert {a.token: a.status for a in lin.attempts(WORKERS)} == {
        "gone-1": "dead", "gone-2": "dead", alive: "running"
    }  # fmt: skip
    assert lin.close_stale_attempts(grace_s=3600) == 0
    lin.close()


def test_the_lineage_shares_optunas_engine(tmp_path):
    """One engine per database: the lineage runs on the engine of Optuna's RDBStorage, with the
    sqlite pragmas set once, and closing the lineage leaves the engine to Optuna."""
    url = f"sqlite:///{tmp_path}/t.db"
    rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    configure_sqlite(rdb.engine)
    pool = rdb.engine.pool
    configure_sqlite(rdb.engine)  # a second call changes nothing (no second listener, no dispose)
    assert rdb.engine.pool is pool
    with rdb.engine.connect() as c:
        assert c.exec_driver_sql("pragma journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("pragma synchronous").scalar() == 1  # NORMAL
    study = optuna.create_study(study_name="s", storage=rdb)
    lin = open_lineage(url, "s", engine=rdb.engine)
    assert isinstance(lin, SqlLineage) and lin.engine is rdb.engine
    token = lin.take_over(WARMUP, None, resumed_from=None)  # BEGIN IMMEDIATE on Optuna's engine
    trial = study.ask()  # Optuna writes through the same pool between the lineage's writes
    assert token is not None and lin.take_over(WARMUP, None, resumed_from=None) is None
    lin.add_pending("ck-1", trial=trial.number, kind="trial", parent=None, step=1, samples=8,
                    epoch=0.1, attempt=token)  # fmt: skip
    lin.close()
    assert rdb.engine.pool is pool  # not disposed: Optuna's
    study.tell(trial, 1.0)
    assert study.best_value == 1.0
    again = open_lineage(url, "s")  # an engine of its own sees the same rows
    assert [r.id for r in again.checkpoints()] == ["ck-1"]
    again.close()


def test_a_worker_declared_dead_does_not_commit(tmp_path, capsys):
    """While trial 1 trains, "another worker" takes it over (as after a missed heartbeat). The
    first worker notices at its next checkpoint (its token is no longer the trial's), stops that
    trial without telling Optuna or writing a checkpoint for it, and goes on with the study."""
    db = tmp_path / "runs" / "lost" / "study.db"
    task = tmp_path / "hijacked.py"
    task.write_text(
        "import os, sqlite3, sys, time, secrets\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'examples')!r})\n"
        "from digits import DigitsMLP\n"
        "class Hijacked(DigitsMLP):\n"
        "    done = False\n"
        "    def loss(self, model, batch):\n"
        "        if not self.done and model.training:\n"
        f"            con = sqlite3.connect({str(db)!r}, timeout=30)\n"
        '            row = con.execute("select token, study from hpsearch_attempts where "\n'
        "                \"trial=1 and status='running'\").fetchone()\n"
        "            if row:\n"
        "                self.done = True\n"
        "                con.execute(\"update hpsearch_attempts set status='dead' \"\n"
        '                            "where token=?", (row[0],))\n'
        '                con.execute("insert into hpsearch_attempts values "\n'
        "                    \"(?, ?, 1, 'elsewhere', 1, 'running', ?, ?, 0, 0, 0, NULL)\",\n"
        "                    (secrets.token_hex(8), row[1], time.time(), time.time() + 3600))\n"
        "                con.commit()\n"
        "            con.close()\n"
        "        return super().loss(model, batch)\n"
    )
    path = write_study(tmp_path, name="lost", task=f"{task}:Hijacked",
                       trials={"n": 3, "epochs": 1, "eval_every": 0.25},
                       pruner={"name": "NopPruner"})  # fmt: skip
    assert main(["run", path]) == 0
    assert "trial 1: another worker took this trial over" in capsys.readouterr().out
    s = Session.open(path, create=False)
    trials = s.study.get_trials()
    assert trials[1].state == TrialState.RUNNING  # left to the worker that took it
    assert s.lineage.checkpoints(trial=1, statuses=("committed",)) == []
    assert s.lineage.current_attempt(1).host == "elsewhere"
    # the study went on: the trial the other worker runs counts toward the 3
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING,
                                         TrialState.COMPLETE]  # fmt: skip
    s.close()
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from hpsearch_attempts where trial=1").fetchone()[0] == 2
    con.close()
