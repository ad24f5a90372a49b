"""MLflow: one run per trial, written at its end in batches, through a client whose HTTP
retries and timeouts are bounded."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from hpsearch.search.loggers.base import TrialEnd, metrics_of, run_name

_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

# MLflow's own defaults (7 retries with exponential backoff, 120 s a request) let an
# unreachable server hold a trial for minutes; these bound one request to about 10 s and its
# retries to 1.5 s of backoff. Set only where the user has not set them: they are process-wide.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0.5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class MlflowLogger:
    """One MLflow run per trial, written at its end: params (the hyperparameters), every
    evaluation's metrics (step: the optimizer step), tags `hpsearch.<lineage key>` and the
    status (FINISHED, KILLED for pruned, FAILED). A tracking server or database takes one
    request per batch instead of one per value."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.name = f"the MLflow logger ({uri})"

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
        for batch in batches(metrics, params, tags):
            client.log_batch(rid, **batch)
        client.set_terminated(rid, _STATUS.get(info.state, "FINISHED"))

    def close(self) -> None:
        pass


def batches(metrics: list[Any], params: list[Any], tags: list[Any]) -> list[dict[str, Any]]:
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
            for name, value in HTTP_LIMITS.items():
                os.environ.setdefault(name, value)
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
