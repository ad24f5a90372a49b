"""A throwaway PostgreSQL server for tests: `initdb` + `pg_ctl` in a temp directory, on a free
loopback port, with its log and unix socket inside its data directory, stopped at the end.

As root (PostgreSQL refuses to run as root) the server runs as the `postgres` user. Tuned to
start fast and lose everything on a crash (fsync off): it holds nothing worth keeping.

Fixtures (registered in conftest.py):
- `postgres_server` (session): the running server; skips only when `initdb`/`pg_ctl` are absent;
- `postgres_url` (session): `postgresql://postgres@127.0.0.1:PORT/hpsearch`, as a user types it;
- `postgres_db` (function): the URL of a fresh, empty database of its own, for one test.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

SETTINGS = [
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=16MB",
    "max_connections=200",  # several engines per test, each with its own pool
    "listen_addresses=127.0.0.1",
]

_databases = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """`cmd` run as the unprivileged `postgres` user when we are root (PostgreSQL refuses to run
    as root), else as it is."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    if shutil.which("su"):
        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
    raise RuntimeError("running as root with neither runuser nor su to drop to 'postgres'")


class PostgresServer:
    """One server in `root`/data; `url(db)` for a database of it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.data = os.path.join(root, "data")
        self.port = 0
        self.started_s = 0.0  # how long initdb + start took

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_postgres_user(list(cmd)), capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        t0 = time.perf_counter()
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
        done = self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                         "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        log = os.path.join(self.data, "server.log")
        for _ in range(5):  # another process may take the free port between bind and start
            self.port = _free_port()
            opts = " ".join(["-p", str(self.port), "-k", self.data] + [f"-c {s}" for s in SETTINGS])
            done = self._run("pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "30",
                             "-o", opts, "start")  # fmt: skip
            if done.returncode == 0:
                break
        else:
            with open(log) as f:
                raise RuntimeError(f"pg_ctl start failed:\n{done.stderr}\n{f.read()[-3000:]}")
        self.started_s = time.perf_counter() - t0

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t{next(_databases)}_{os.getpid()}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_server() -> PostgresServer:
    server = PostgresServer(tempfile.mkdtemp(prefix="hpsearch-pg-"))
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    missing = [b for b in ("initdb", "pg_ctl") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"PostgreSQL tests skipped: {' and '.join(missing)} not on the PATH "
                    "(install the PostgreSQL server binaries to run them)")  # fmt: skip
    server = start_server()
    print(f"\nthrowaway PostgreSQL on port {server.port}, started in {server.started_s:.2f} s")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database("hpsearch")


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()
