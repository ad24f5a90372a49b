"""The checkpoint tree and the coordination of workers, beside the Optuna study.

`Lineage` is the Protocol that callers type against (`protocol.py`); `open_lineage` opens one on
a study database (`sql.py`: sqlite, PostgreSQL, the SQLite file beside a journal storage;
`schema.py`: the tables, the URL and its driver, race-free creation, the connection budget;
`journal.py`: a journal storage's places and the file systems it is safe on); `MemoryLineage`
keeps one in memory for tests.
The rows and their states are in `model.py`.
"""

from hpsearch.lineage.memory import MemoryDatabase, MemoryLineage
from hpsearch.lineage.model import (
    LIVE,
    WARMUP,
    WORKERS,
    AttemptRow,
    AttemptStatus,
    CheckpointKind,
    CheckpointRow,
    CheckpointStatus,
    DuplicateCheckpoint,
    attempt_is_stale,
)
from hpsearch.lineage.protocol import CheckpointTree, Coordination, Lineage
from hpsearch.lineage.schema import (
    POOL_SIZE,
    configure_sqlite,
    create_schema,
    database_url,
    engine_kwargs,
    retry_if_busy,
)
from hpsearch.lineage.sql import SqlLineage, open_lineage

__all__ = [
    "LIVE",
    "POOL_SIZE",
    "WARMUP",
    "WORKERS",
    "AttemptRow",
    "AttemptStatus",
    "CheckpointKind",
    "CheckpointRow",
    "CheckpointStatus",
    "CheckpointTree",
    "Coordination",
    "DuplicateCheckpoint",
    "Lineage",
    "MemoryDatabase",
    "MemoryLineage",
    "SqlLineage",
    "attempt_is_stale",
    "configure_sqlite",
    "create_schema",
    "database_url",
    "engine_kwargs",
    "open_lineage",
    "retry_if_busy",
]
