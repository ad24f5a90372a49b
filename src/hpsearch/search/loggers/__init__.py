"""Optional loggers beside Optuna: TensorBoard, MLflow and Weights & Biases get every trial's
evaluations (every metric `evaluate()` returns), its hyperparameters and its place in the
lineage. Off unless the study file turns one on::

    loggers:
      tensorboard: runs/tb          # one run per trial: runs/tb/<study>/trial-00012
      mlflow: sqlite:///mlflow.db   # one run per trial in the experiment named after the study
      wandb: {project: my-project}  # one run per trial in the project, grouped by study

TensorBoard is written as the trial evaluates; MLflow and W&B once, at the trial's end. A trial
stopped by Ctrl-C or taken over by another worker is logged when it ends. Loggers never stall
training (`guard`): every call is bounded, and a logger that fails is switched off for the rest
of the run with one warning; the trials go on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

from hpsearch.config import LoggerSettings
from hpsearch.search.loggers.base import (
    LINEAGE_KEYS,
    TrialEnd,
    TrialLogger,
    metrics_of,
    run_name,
)
from hpsearch.search.loggers.guard import RunLoggers, run_of
from hpsearch.search.loggers.to_mlflow import MlflowLogger
from hpsearch.search.loggers.to_tensorboard import TensorBoardLogger
from hpsearch.search.loggers.to_wandb import WandbLogger

__all__ = [
    "LINEAGE_KEYS",
    "Loggers",
    "MlflowLogger",
    "RunLoggers",
    "TensorBoardLogger",
    "TrialEnd",
    "TrialLogger",
    "WandbLogger",
    "metrics_of",
    "open_loggers",
    "run_name",
]


class Loggers:
    """The loggers of one trial, each call bounded and a failure switching that logger off for
    the run (`run`)."""

    def __init__(self, loggers: Sequence[TrialLogger], run: RunLoggers | None = None) -> None:
        self.loggers = list(loggers)
        self.run = run or RunLoggers()

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        for logger in self.loggers:
            self.run.call(_name(logger), partial(logger.evaluation, step, metrics))

    def end(self, info: TrialEnd) -> None:
        for logger in self.loggers:
            self.run.call(_name(logger), partial(logger.end, info))

    def close(self) -> None:
        for logger in self.loggers:
            self.run.call(_name(logger), logger.close)


def open_loggers(settings: LoggerSettings, study: str, number: int) -> Loggers | None:
    """The loggers the study file turns on, for trial `number`; None if there are none."""
    out: list[TrialLogger] = []
    if settings.tensorboard is not None:
        out.append(TensorBoardLogger(settings.tensorboard, study, number))
    if settings.mlflow is not None:
        out.append(MlflowLogger(settings.mlflow))
    if settings.wandb is not None:
        out.append(WandbLogger(settings.wandb))
    return Loggers(out, run_of(settings)) if out else None


def _name(logger: TrialLogger) -> str:
    return getattr(logger, "name", None) or type(logger).__name__
