"""The checkpoint tree and the coordination of workers, beside the Optuna study.

`Lineage` is the Protocol that callers type against (`protocol.py`); `open_lineage` opens one on
a study database (`sql.py`: sqlite, PostgreSQL); `MemoryLineage` keeps one in memory for tests.
The rows and their states are in `model.py`.
"""

from typing import TYPE_CHECKING

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
from hpsearch.lineage.protocol import CheckpointTree, Coordination
from hpsearch.lineage.sql import SqlLineage, configure_sqlite, engine_kwargs, open_lineage

if TYPE_CHECKING:
    from hpsearch.lineage.protocol import Lineage
else:
    # TEMPORARY: at run time `Lineage(url, study)` still builds a SqlLineage, so callers that
    # construct it keep working until they call open_lineage; then import the Protocol here
    # unconditionally (delete this else branch).
    from hpsearch.lineage.sql import SqlLineage as Lineage

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
