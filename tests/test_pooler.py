"""Many workers through PgBouncer in transaction mode (tests/pgserver.py), as clusters run them:
`hpsearch worker` processes, each on the pooler's URL, grow one fork tree to its end; every node
runs once, no worker holds more than `POOL_SIZE` connections, and the server sees no more than
PgBouncer's pool. Before, 16 workers through PgBouncer finished no node: the schema lock was a
session-level advisory lock and psycopg prepared statements on the server, and either outlives the
transaction that a pooler in transaction mode lends a server connection for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import sqlalchemy as sa
from optuna.trial import TrialState

from hpsearch.lineage import POOL_SIZE, WORKERS, engine_kwargs
from hpsearch.lineage.schema import create_engine
from hpsearch.search.records import trial_attr
from hpsearch.search.session import Session
from pgserver import PgBouncer, PostgresServer
from studyutil import ROOT, write_study

FORK = os.path.join(ROOT, "tests", "forkworkers.py")

WORKER_COUNT = 16
# 16 nodes: 8 roots to half the budget, the best 4 forked twice each; a node is an eighth of an
# epoch of the digits MLP, so the run is the workers' start-up and their bookkeeping
TREE = {
    "warmup": None,
    "tree": {"roots": 8, "rungs": [0.5, 1.0], "keep": 0.5, "children": 2,
             "hparams": {"weight_decay": 1e-4, "hidden": 16}},
    "trials": {"epochs": 0.25, "eval_every": 0.125},
    "schedule": {"name": "wsd", "decay": 0.25},
    "checkpoints": {"every": 0.125, "keep_best": 2},
    "pruner": {"name": "NopPruner"},
}  # fmt: skip


def test_a_process_pool_is_the_connection_budget() -> None:
    """The budget the README states: at most POOL_SIZE connections per process, no overflow,
    and no server-side prepared statements with psycopg 3."""
    kw = engine_kwargs("postgresql+psycopg://u@h/db")
    assert (kw["pool_size"], kw["max_overflow"]) == (POOL_SIZE, 0) and POOL_SIZE <= 3
    assert kw["connect_args"]["prepare_threshold"] is None
    mine = f"hpsearch {socket.gethostname()}:{os.getpid()}"
    assert kw["connect_args"]["application_name"] == mine
    assert "application_name" not in engine_kwargs("postgresql://u@h/db?application_name=x").get(
        "connect_args", {}
    )
    engine = create_engine("postgresql://u@127.0.0.1:1/db")  # nothing is connected yet
    try:
        assert engine.pool.size() == POOL_SIZE and engine.pool._max_overflow == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def _server_connections(server: PostgresServer, database: str) -> int:
    with psycopg.connect(server.url("postgres"), autocommit=True) as con:
        row = con.execute(
            "select count(*) from pg_stat_activity where datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_sixteen_workers_grow_a_tree_through_pgbouncer(
    tmp_path: Path, postgres_server: PostgresServer, pgbouncer: PgBouncer
) -> None:
    direct = postgres_server.create_database()
    database = sa.engine.make_url(direct).database
    url = pgbouncer.url(direct)
    path = write_study(tmp_path, name="pool", **TREE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # one process imports torch once and forks the workers (tests/forkworkers.py): 16 imports
    # would cost about 40 s of CPU on their own
    cmd = [sys.executable, FORK, str(WORKER_COUNT), "worker", path, "--storage", url]
    t0 = time.perf_counter()
    with open(tmp_path / "workers.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_clients = peak_server = 0
        try:
            while proc.poll() is None:
                # what the pooler and the server hold now: an upper bound each, not a timing
                clients = [r for r in pgbouncer.show("CLIENTS") if r[2] == database]
                peak_clients = max(peak_clients, len(clients))
                peak_server = max(peak_server, _server_connections(postgres_server, database))
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=600)  # a bound for a hung worker
    wall = time.perf_counter() - t0
    out = (tmp_path / "workers.log").read_text()
    assert proc.returncode == 0, out[-5000:]
    assert peak_clients <= WORKER_COUNT * POOL_SIZE, peak_clients
    # the server's side is PgBouncer's to keep (its pool of SERVER_CONNECTIONS), not asserted:
    # a connection it is replacing may show beside the new one for a moment
    s = Session.open(path, storage=url, create=False)
    try:
        trials = s.study.get_trials(deepcopy=False)
        slots = [(trial_attr(t, "generation"), trial_attr(t, "parent_trial"),
                  trial_attr(t, "child")) for t in trials]  # fmt: skip
        assert len(slots) == len(set(slots)) == 16, slots
        assert all(t.state == TrialState.COMPLETE for t in trials)
        attempts = s.lineage.attempts()
        assert len({a.pid for a in attempts if a.trial == WORKERS}) == WORKER_COUNT
        done = Counter(a.trial for a in attempts if a.status == "done" and a.trial >= 0)
        assert done == Counter(t.number for t in trials), "each node run to its end once"
    finally:
        s.close()
    print(
        f"\n{WORKER_COUNT} workers through PgBouncer: {len(trials)} nodes in {wall:.1f} s; "
        f"at most {peak_clients} clients of the pooler, {peak_server} server connections"
    )
