"""Helpers for testing hpsearch and studies built on it.

- `synthetic_study`: a deterministic study view for the plot, the export and the status table,
  without training (`hpsearch.testing.synthetic`).
- `kill_at_events` and the forgers: SIGKILL a real `hpsearch run` right after observable events
  and damage committed checkpoints between runs (`hpsearch.testing.faults`); the resume tests and
  `benchmarks/fault_campaign.py` use them.
"""

from hpsearch.testing.faults import (
    EVENTS,
    FORGERIES,
    Kill,
    StudyPaths,
    Watch,
    forge,
    kill_at_events,
    takeovers_after,
)
from hpsearch.testing.synthetic import synthetic_study

__all__ = [
    "EVENTS",
    "FORGERIES",
    "Kill",
    "StudyPaths",
    "Watch",
    "forge",
    "kill_at_events",
    "synthetic_study",
    "takeovers_after",
]
