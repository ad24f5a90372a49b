"""The lineage conformance suite over every backend that exists: SqlLineage on a sqlite file, beside
a journal, on a throwaway PostgreSQL server and through PgBouncer in front of it (each lineage with
its own engine, as separate workers), and MemoryLineage. The races are forced 100 times on each
database (30 through PgBouncer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.lineage import Lineage, MemoryDatabase, MemoryLineage, SqlLineage, open_lineage
from hpsearch.lineage.sql import create_engine
from hpsearch.testing.conformance.lineage import LineageTestCase, OpenStudy
from pgserver import PgBouncer, PostgresServer


class TestSqliteLineage(LineageTestCase):
    RACES = 100

    def open_database(self, tmp_path: Path) -> OpenStudy:
        url = f"sqlite:///{tmp_path}/lineage.db"

        def open_study(study: str) -> Lineage:
            return SqlLineage(url, study)

        return open_study


class TestJournalLineage(LineageTestCase):
    """A journal storage's lineage, opened by its storage URL as workers open it: the SQLite
    database beside the journal file, after its file system was found safe."""

    RACES = 100

    def open_database(self, tmp_path: Path) -> OpenStudy:
        url = f"journal:///{tmp_path}/study.journal"

        def open_study(study: str) -> Lineage:
            return open_lineage(url, study)

        return open_study


class TestMemoryLineage(LineageTestCase):
    def open_database(self, tmp_path: Path) -> OpenStudy:
        database = MemoryDatabase()

        def open_study(study: str) -> Lineage:
            return MemoryLineage(study, database)

        return open_study


class TestSqliteLineageOnOneEngine(LineageTestCase):
    """All lineages on one engine, as the threads of one process share Optuna's."""

    def open_database(self, tmp_path: Path) -> OpenStudy:
        url = f"sqlite:///{tmp_path}/lineage.db"
        engine = create_engine(url)

        def open_study(study: str) -> Lineage:
            return open_lineage(url, study, engine=engine)

        return open_study


class TestPostgresLineage(LineageTestCase):
    """Each test on a database of its own, each lineage on an engine of its own."""

    RACES = 100

    @pytest.fixture(autouse=True)
    def _server(self, postgres_server: PostgresServer) -> None:
        self.server = postgres_server

    def open_database(self, tmp_path: Path) -> OpenStudy:
        url = self.server.create_database()

        def open_study(study: str) -> Lineage:
            return SqlLineage(url, study)

        return open_study


class TestPgBouncerLineage(LineageTestCase):
    """Through PgBouncer in transaction mode (tests/pgserver.py): a transaction may run on any of
    its server connections, so a lock or a prepared statement that outlives one breaks here.
    Before, psycopg prepared a query it ran 5 times, and the next run of it on another server
    connection failed ("prepared statement ... does not exist")."""

    RACES = 30

    @pytest.fixture(autouse=True)
    def _server(self, postgres_server: PostgresServer, pgbouncer: PgBouncer) -> None:
        self.server, self.bouncer = postgres_server, pgbouncer

    def open_database(self, tmp_path: Path) -> OpenStudy:
        url = self.bouncer.url(self.server.create_database())

        def open_study(study: str) -> Lineage:
            return SqlLineage(url, study)

        return open_study
