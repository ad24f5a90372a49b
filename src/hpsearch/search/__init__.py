"""The search layer: a study run on Optuna's ask-and-tell interface, on top of training,
checkpoints and the lineage.

`runner.run_study` opens a `session.Session` and runs a `worker.Worker`; the worker takes over
trials of dead workers, retries failed ones, and asks the `scheduler` for new ones; `trial` runs
one. `records` names every `hpsearch.*` attribute; `optuna_bridge` holds every private Optuna
call. See docs/architecture.md. This package imports nothing itself.
"""

from __future__ import annotations
