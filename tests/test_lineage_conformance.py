"""The lineage conformance suite over every backend that exists: SqlLineage on a sqlite file and
on a throwaway PostgreSQL server (each lineage with its own engine, as separate workers), and
MemoryLineage. The races are forced 100 times on each database."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.lineage import Lineage, MemoryDatabase, MemoryLineage, SqlLineage, open_lineage
from hpsearch.lineage.sql import create_engine
from hpsearch.testing.conformance.lineage import LineageTestCase, OpenStudy
from pgserver import PostgresServer


class TestSqliteLineage(LineageTestCase):
    RACES = 100

    def open_database(self, tmp_path: Path) -> OpenStudy:
        url = f"sqlite:///{tmp_path}/lineage.db"

        def open_study(study: str) -> Lineage:
            return SqlLineage(url, study)

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
