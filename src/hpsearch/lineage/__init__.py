"""The checkpoint tree and the coordination of workers, in tables beside the Optuna study."""

from hpsearch.lineage.sql import (
    LIVE,
    WARMUP,
    WORKERS,
    AttemptRow,
    CheckpointRow,
    Lineage,
    attempt_is_stale,
)

__all__ = [
    "LIVE",
    "WARMUP",
    "WORKERS",
    "AttemptRow",
    "CheckpointRow",
    "Lineage",
    "attempt_is_stale",
]
