"""Optional loggers beside Optuna: TensorBoard and MLflow get every trial's evaluations (every
metric `evaluate()` returns), its hyperparameters and its place in the lineage. Off unless the
study file turns one on::

    loggers:
      tensorboard: runs/tb          # one run per trial: runs/tb/<study>/trial-00012
      mlflow: sqlite:///mlflow.db   # one run per trial in the experiment named after the study

TensorBoard is written as the trial evaluates (its writer queues events to a thread: microseconds
on the trial's side); the hyperparameters and the lineage go to its HParams plugin at the trial's
end. MLflow is written once, at the trial's end, in batches: a tracking server or database takes
one request per batch instead of one per value. A trial stopped by Ctrl-C or taken over by
another worker is logged when it ends. A logger that fails prints a warning; the trial goes on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hpsearch.config import LoggerSettings
from hpsearch.search.records import EVALUATION_KEYS, TrialKey

# the trial's facts that become tags (MLflow) or HParams (TensorBoard), when recorded
LINEAGE_KEYS: tuple[TrialKey, ...] = (
    "parent_trial",
    "parent_checkpoint",
    "fork_step",
    "generation",
    "retry_of",
)
_MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended, for the loggers."""

    study: str
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    hparams: Mapping[str, Any]
    lineage: Mapping[str, Any]  # LINEAGE_KEYS that are recorded (not None)
    evaluations: Sequence[Mapping[str, Any]]  # {step, samples, index, <metric>: value ...}


class TrialLogger(Protocol):
    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """One evaluation as it happens (`step`: the optimizer step)."""

    def end(self, info: TrialEnd) -> None:
        """The trial is over: write what is left and release everything."""

    def close(self) -> None:
        """The attempt stops but the trial goes on (a stop, a takeover): flush and release."""


class Loggers:
    """The loggers of one trial. A logger's failure is a warning (once), never the trial's."""

    def __init__(self, loggers: Sequence[TrialLogger]) -> None:
        self.loggers = list(loggers)
        self._broken: set[int] = set()

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        self._each("evaluation", step, metrics)

    def end(self, info: TrialEnd) -> None:
        self._each("end", info)

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args: Any) -> None:
        for i, logger in enumerate(self.loggers):
            if i in self._broken:
                continue
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # a logger's trouble must not fail the trial
                self._broken.add(i)
                print(
                    f"warning: {type(logger).__name__} failed and is off for this trial: "
                    f"{type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )


def open_loggers(settings: LoggerSettings, study: str, number: int) -> Loggers | None:
    """The loggers the study file turns on, for trial `number`; None if there are none."""
    out: list[TrialLogger] = []
    if settings.tensorboard is not None:
        out.append(TensorBoardLogger(settings.tensorboard, study, number))
    if settings.mlflow is not None:
        out.append(MlflowLogger(settings.mlflow))
    return Loggers(out) if out else None


def run_name(number: int) -> str:
    return f"trial-{number:05d}"


def metrics_of(evaluation: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in evaluation.items() if k not in EVALUATION_KEYS}


# -- TensorBoard ---------------------------------------------------------------------------------


class TensorBoardLogger:
    """Scalars `<metric>` at each evaluation (x: the optimizer step) in `<dir>/<study>/<trial>`,
    and at the end the HParams plugin's record: hyperparameters and lineage (as `hpsearch/...`)."""

    def __init__(self, root: str, study: str, number: int) -> None:
        self.dir = os.path.join(root, study, run_name(number))
        self._writer: Any = None

    def writer(self) -> Any:
        if self._writer is None:  # made on first use: a trial that never evaluates leaves no run
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.dir, flush_secs=10)
        return self._writer

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        w = self.writer()
        for name, value in metrics.items():
            w.add_scalar(name, value, global_step=step)

    def end(self, info: TrialEnd) -> None:
        from torch.utils.tensorboard.summary import hparams

        last = metrics_of(info.evaluations[-1]) if info.evaluations else {}
        values: dict[str, Any] = {k: _hparam(v) for k, v in info.hparams.items()}
        values |= {f"hpsearch/{k}": _hparam(v) for k, v in info.lineage.items()}
        values["hpsearch/state"] = info.state
        exp, ssi, sei = hparams(values, last)
        w = self.writer()
        for summary in (exp, ssi, sei):
            w.file_writer.add_summary(summary)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _hparam(value: Any) -> int | float | str | bool:
    return value if isinstance(value, int | float | str | bool) else str(value)


# -- MLflow --------------------------------------------------------------------------------------


class MlflowLogger:
    """One MLflow run per trial, written at its end: params (the hyperparameters), every
    evaluation's metrics (step: the optimizer step), tags `hpsearch.<lineage key>` and the
    status (FINISHED, KILLED for pruned, FAILED)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        pass  # the evaluations come at the end, from the trial's record: one batch, not many

    def end(self, info: TrialEnd) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = _client(self.uri)
        run = client.create_run(
            _experiment(client, info.study), run_name=run_name(info.number),
            tags={"hpsearch.study": info.study, "hpsearch.trial": str(info.number)},
        )  # fmt: skip
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, value, now, int(e["step"]))
            for e in info.evaluations
            for name, value in metrics_of(e).items()
        ]
        params = [Param(k, str(v)) for k, v in info.hparams.items()]
        tags = [RunTag(f"hpsearch.{k}", str(v)) for k, v in info.lineage.items()]
        tags.append(RunTag("hpsearch.state", info.state))
        rid = run.info.run_id
        for batch in _batches(metrics, params, tags):
            client.log_batch(rid, **batch)
        client.set_terminated(rid, _MLFLOW_STATUS.get(info.state, "FINISHED"))

    def close(self) -> None:
        pass


def _batches(metrics: list[Any], params: list[Any], tags: list[Any]) -> list[dict[str, Any]]:
    """log_batch requests within MLflow's limits: 100 params, 100 tags, 1000 values in all."""
    out: list[dict[str, Any]] = []
    while metrics or params or tags or not out:
        p, t = params[:100], tags[:100]
        m = metrics[: 1000 - len(p) - len(t)]
        out.append({"metrics": m, "params": p, "tags": t})
        metrics, params, tags = metrics[len(m) :], params[len(p) :], tags[len(t) :]
    return out


_clients: dict[str, Any] = {}
_lock = threading.Lock()


def _client(uri: str) -> Any:
    """One client per tracking URI and process (building one resolves the store)."""
    with _lock:
        if uri not in _clients:
            if uri.startswith("file:"):
                # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked:
                # the study file asked for it by naming a file: URI
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.tracking import MlflowClient

            _clients[uri] = MlflowClient(tracking_uri=uri)
        return _clients[uri]


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # another worker created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)
