"""The lineage conformance suite over every backend that exists: SqlLineage on a sqlite file
(each lineage with its own engine, as separate workers) and MemoryLineage."""

from __future__ import annotations

from pathlib import Path

from hpsearch.lineage import Lineage, MemoryDatabase, MemoryLineage, SqlLineage, open_lineage
from hpsearch.lineage.sql import create_engine
from hpsearch.testing.conformance.lineage import LineageTestCase, OpenStudy


class TestSqliteLineage(LineageTestCase):
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
