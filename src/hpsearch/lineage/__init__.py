"""The checkpoint tree and the coordination of workers, beside the Optuna study.

`Lineage` is the Protocol that callers type against (`protocol.py`); `open_lineage` opens one on
a study database (`sql.py`: sqlite, PostgreSQL); `MemoryLineage` keeps one in memory for tests.
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
from hpsearch.lineage.sql import SqlLineage, configure_sqlite, engine_kwargs, open_lineage

__all__ = [
    "LIVE",
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
    "engine_kwargs",
    "open_lineage",
]
