"""A throwaway PostgreSQL server for tests: `initdb` + `pg_ctl` in a temp directory, on a free
loopback port, with its log and unix socket inside its data directory, stopped at the end.

As root (PostgreSQL refuses to run as root) the server runs as the `postgres` user. Tuned to
start fast and lose everything on a crash (fsync off): it holds nothing worth keeping.

A PgBouncer in transaction mode (`pool_mode = transaction`, as clusters put in front of
PostgreSQL for many workers) can stand in front of it on another loopback port, run the same way.

Fixtures (registered in conftest.py):
- `postgres_server` (session): the running server; skips only when `initdb`/`pg_ctl` are absent;
- `postgres_url` (session): `postgresql://postgres@127.0.0.1:PORT/hpsearch`, as a user types it;
- `postgres_db` (function): the URL of a fresh, empty database of its own, for one test;
- `pgbouncer` (session): a PgBouncer in transaction mode in front of `postgres_server`, with
  `SERVER_CONNECTIONS` server connections per database; skips only when `pgbouncer` is absent.

Under `CI=true` a missing binary fails the test instead of skipping it: CI must not pass by
skipping (`.ci/run` installs them).
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


def skip_unless_installed(what: str, binaries: tuple[str, ...], install: str) -> None:
    """Skip the test when one of `binaries` is not on the PATH, saying what is missing; under
    `CI=true` fail it instead: CI must run every test."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if not missing:
        return
    why = f"{what} tests: {' and '.join(missing)} not on the PATH ({install} to run them)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI=true: CI must not pass by skipping", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    skip_unless_installed("PostgreSQL", ("initdb", "pg_ctl"),
                          "install the PostgreSQL server binaries")  # fmt: skip
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


# -- PgBouncer in front of it ---------------------------------------------------------------------

SERVER_CONNECTIONS = 8  # PgBouncer's default_pool_size: server connections per database and user


class PgBouncer:
    """PgBouncer in transaction mode on a free loopback port, in front of `server`: each client
    transaction gets one of `SERVER_CONNECTIONS` server connections, the next maybe another, so
    nothing may outlive a transaction on the server (a session-level advisory lock, a prepared
    statement). Runs as `postgres` when we are root (PgBouncer refuses to run as root)."""

    def __init__(self, server: PostgresServer, root: str) -> None:
        self.server, self.root = server, root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = os.path.join(root, "pgbouncer.log")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
        users = os.path.join(self.root, "users.txt")
        with open(users, "w") as f:
            f.write('"postgres" ""\n')
        for _ in range(5):  # another process may take the free port between bind and start
            self.port = _free_port()
            ini = os.path.join(self.root, "pgbouncer.ini")
            with open(ini, "w") as f:
                f.write(f"""[databases]
* = host=127.0.0.1 port={self.server.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 1000
server_reset_query =
logfile = {self.log}
pidfile = {os.path.join(self.root, "pgbouncer.pid")}
admin_users = postgres
ignore_startup_parameters = extra_float_digits
""")
            if os.geteuid() == 0:
                for path in (users, ini):
                    shutil.chown(path, user="postgres")
            cmd = _as_postgres_user(["pgbouncer", ini])
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._listening():
                return
            self.stop()
        raise RuntimeError(f"pgbouncer did not start:\n{self._log_tail()}")

    def _listening(self) -> bool:
        for _ in range(200):
            if self.proc is None or self.proc.poll() is not None:
                return False
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return True
            time.sleep(0.025)
        return False

    def _log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, database_url: str) -> str:
        """The URL of `database_url`'s database (a URL of the server) through the pooler."""
        return database_url.replace(f":{self.server.port}/", f":{self.port}/", 1)

    def show(self, what: str) -> list[tuple[object, ...]]:
        """PgBouncer's admin console: `SHOW <what>` (CLIENTS, SERVERS, POOLS, ...)."""
        import psycopg

        admin = f"postgresql://postgres@127.0.0.1:{self.port}/pgbouncer"
        with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as con:
            return list(con.execute(f"SHOW {what}").fetchall())


def start_pgbouncer(server: PostgresServer) -> PgBouncer:
    bouncer = PgBouncer(server, tempfile.mkdtemp(prefix="hpsearch-pgbouncer-"))
    try:
        bouncer.start()
    except BaseException:
        bouncer.stop()
        shutil.rmtree(bouncer.root, ignore_errors=True)
        raise
    return bouncer


@pytest.fixture(scope="session")
def pgbouncer(postgres_server: PostgresServer) -> Iterator[PgBouncer]:
    skip_unless_installed("PgBouncer", ("pgbouncer",), "apt-get install pgbouncer")
    bouncer = start_pgbouncer(postgres_server)
    yield bouncer
    bouncer.stop()
    shutil.rmtree(bouncer.root, ignore_errors=True)
