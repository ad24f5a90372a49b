"""The loggers against the real libraries: written to a temporary directory and read back with the
library's own reader (TensorBoard's EventAccumulator, MLflow's MlflowClient on a file store, W&B's
`wandb leet inspect` on an offline run), a fork-tree trial's lineage included; the `loggers:`
section of the study file; and loggers that fail or hang (an unreachable MLflow server, an
unwritable TensorBoard directory, W&B without an API key) switched off for the run with one
warning while the study goes on. A whole study with TensorBoard and MLflow on is in
test_metrics.py."""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import socket
import subprocess
import sys
import threading

import pytest

from hpsearch.cli import main
from hpsearch.config import LoggerSettings, WandbSettings, load_study_file
from hpsearch.errors import StudyFileError
from hpsearch.search.loggers import (
    Loggers,
    MlflowLogger,
    RunLoggers,
    TensorBoardLogger,
    TrialEnd,
    WandbLogger,
    guard,
    open_loggers,
)
from hpsearch.search.loggers.to_mlflow import batches as mlflow_batches
from hpsearch.search.session import Session
from studyutil import write_study

EVALS = (
    {"step": 10, "samples": 640, "index": 1, "val_accuracy": 0.5, "val_loss": 1.25},
    {"step": 20, "samples": 1280, "index": 2, "val_accuracy": 0.75, "val_loss": 0.5},
)
HPARAMS = {"lr": 3e-3, "batch_size": 64, "optimizer": "adamw", "betas": [0.9, 0.99]}
LINEAGE = {"parent_trial": 4, "parent_checkpoint": "ck-4-final", "fork_step": 5, "generation": 2}


def end(number: int, state: str = "COMPLETE") -> TrialEnd:
    return TrialEnd("s", number, state, HPARAMS, LINEAGE, EVALS)


def test_tensorboard_scalars_at_each_evaluation_and_hparams_with_the_lineage(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    logger = TensorBoardLogger(str(tmp_path), "s", 7)
    for e in EVALS:
        logger.evaluation(e["step"], {"val_accuracy": e["val_accuracy"], "val_loss": e["val_loss"]})
    logger.end(end(7))
    ea = accumulator.EventAccumulator(str(tmp_path / "s" / "trial-00007"))
    ea.Reload()
    assert [(x.step, x.value) for x in ea.Scalars("val_accuracy")] == [(10, 0.5), (20, 0.75)]
    assert [(x.step, x.value) for x in ea.Scalars("val_loss")] == [(10, 1.25), (20, 0.5)]
    content = ea.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == 3e-3 and hp["batch_size"].number_value == 64
    assert hp["optimizer"].string_value == "adamw" and hp["betas"].string_value == "[0.9, 0.99]"
    assert hp["hpsearch/parent_trial"].number_value == 4
    assert hp["hpsearch/generation"].number_value == 2
    assert hp["hpsearch/parent_checkpoint"].string_value == "ck-4-final"
    assert hp["hpsearch/fork_step"].number_value == 5
    assert hp["hpsearch/state"].string_value == "COMPLETE"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(m.name.tag for m in experiment.metric_infos) == ["val_accuracy", "val_loss"]


def test_mlflow_one_run_per_trial_with_params_metrics_lineage_tags_and_status(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file://{tmp_path / 'mlruns'}"
    for number, state in ((3, "COMPLETE"), (4, "PRUNED"), (5, "FAIL")):
        logger = MlflowLogger(uri)
        logger.evaluation(10, {"val_accuracy": 0.5})  # nothing yet: written at the end
        logger.end(end(number, state))
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["trial-00003", "trial-00004", "trial-00005"]
    statuses = {name: r.info.status for name, r in by_name.items()}
    assert statuses == {"trial-00003": "FINISHED", "trial-00004": "KILLED",
                        "trial-00005": "FAILED"}  # fmt: skip
    run = by_name["trial-00003"]
    assert run.data.params == {"lr": "0.003", "batch_size": "64", "optimizer": "adamw",
                               "betas": "[0.9, 0.99]"}  # fmt: skip
    tags = run.data.tags
    assert tags["hpsearch.trial"] == "3" and tags["hpsearch.study"] == "s"
    assert tags["hpsearch.parent_trial"] == "4" and tags["hpsearch.generation"] == "2"
    assert tags["hpsearch.parent_checkpoint"] == "ck-4-final" and tags["hpsearch.fork_step"] == "5"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 1.25), (20, 0.5)]


def test_mlflow_batches_stay_within_its_limits():
    batches = mlflow_batches(list(range(2500)), list(range(150)), list(range(5)))
    assert all(len(b["params"]) <= 100 and len(b["tags"]) <= 100 for b in batches)
    assert all(len(b["metrics"]) + len(b["params"]) + len(b["tags"]) <= 1000 for b in batches)
    assert sum(len(b["metrics"]) for b in batches) == 2500 and len(batches) == 3
    assert [len(b["params"]) for b in batches] == [100, 50, 0]
    assert mlflow_batches([], [], []) == [{"metrics": [], "params": [], "tags": []}]


class _Broken:
    name = "the broken logger"

    def __init__(self) -> None:
        self.calls = 0

    def evaluation(self, step, metrics):
        self.calls += 1
        raise OSError("disk full")

    def end(self, info):
        raise AssertionError("never called once broken")

    def close(self):
        pass


class _Kept:
    def __init__(self):
        self.steps = []

    def evaluation(self, step, metrics):
        self.steps.append(step)

    def end(self, info):
        self.steps.append("end")

    def close(self):
        pass


def test_a_failing_logger_is_off_for_the_rest_of_the_run_with_one_warning(capsys):
    run, broken, kept = RunLoggers(), _Broken(), _Kept()
    for trial in range(3):  # three trials of one run
        loggers = Loggers([broken, kept], run)
        loggers.evaluation(1, {"m": 1.0})
        loggers.evaluation(2, {"m": 1.0})
        loggers.end(end(trial))
    assert kept.steps == [1, 2, "end"] * 3  # the others go on
    assert broken.calls == 1 and run.calls["the broken logger"] == 1  # no retry per trial
    err = capsys.readouterr().err
    assert err.count("warning: the broken logger failed and is off for the rest of this run: "
                     "OSError: disk full") == 1  # fmt: skip
    assert err.count("warning:") == 1


def test_a_logger_that_does_not_answer_is_abandoned_and_switched_off(monkeypatch, capsys):
    release = threading.Event()

    class Hung(_Kept):
        name = "the hung logger"

        def evaluation(self, step, metrics):
            release.wait()  # a call that never returns (a server that accepts and says nothing)

    monkeypatch.setattr(guard, "CALL_TIMEOUT_S", 0.2)
    run, hung, kept = RunLoggers(), Hung(), _Kept()
    try:
        for trial in range(2):
            loggers = Loggers([hung, kept], run)
            loggers.evaluation(5, {"m": 1.0})
            loggers.end(end(trial))
    finally:
        release.set()
    assert kept.steps == [5, "end", 5, "end"] and run.calls["the hung logger"] == 1
    err = capsys.readouterr().err
    assert "warning: the hung logger failed and is off for the rest of this run: " \
        "LoggerTimeout: no answer in 0.2 s" in err  # fmt: skip
    assert err.count("warning:") == 1


def _closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _counted(calls, name, method):  # type: ignore[no-untyped-def]
    """The real method, counting its calls (a spy, not a stand-in)."""

    @functools.wraps(method)
    def wrapper(self, *args):  # type: ignore[no-untyped-def]
        calls[name] = calls.get(name, 0) + 1
        return method(self, *args)

    return wrapper


def test_unreachable_loggers_never_stall_a_study(tmp_path, monkeypatch, capsys):
    """MLflow at a closed loopback port, TensorBoard into a path under a file, W&B online with no
    API key (its server a closed loopback port too): the 6-trial study finishes, each logger is
    tried once, fails once, and says so once; nothing leaves the machine."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    port = _closed_port()
    _wandb_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    calls: dict[str, int] = {}
    for cls, method in ((MlflowLogger, "end"), (WandbLogger, "end"),
                        (TensorBoardLogger, "evaluation")):  # fmt: skip
        monkeypatch.setattr(cls, method, _counted(calls, cls.__name__, getattr(cls, method)))
    (tmp_path / "a-file").write_text("")
    path = write_study(
        tmp_path, trials={"n": 6, "epochs": 1, "eval_every": 0.5},
        loggers={"mlflow": f"http://127.0.0.1:{port}", "tensorboard": "a-file/tb",
                 "wandb": {"project": "p", "mode": "online"}},
    )  # fmt: skip
    assert main(["run", path]) == 0
    s = Session.open(path, create=False)
    states = [t.state.name for t in s.study.get_trials()]
    s.close()
    assert len(states) == 6 and set(states) <= {"COMPLETE", "PRUNED"}
    assert calls == {"MlflowLogger": 1, "WandbLogger": 1, "TensorBoardLogger": 1}
    err = capsys.readouterr().err
    for name in (f"the MLflow logger (http://127.0.0.1:{port})",
                 f"the TensorBoard logger ({tmp_path / 'a-file' / 'tb'})",
                 "the W&B logger (project p)"):  # fmt: skip
        assert err.count(f"warning: {name} failed and is off for the rest of this run: ") == 1
    assert err.count("failed and is off") == 3


def _wandb_env(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """W&B kept on this machine and in the test's directory, and quiet."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_DIR": str(tmp_path / "wandb-dir"),
                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
                        "WANDB_DISABLE_CODE": "true"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def _wandb_records(path: str) -> list[dict]:
    """The records of an offline run's .wandb file, read by W&B's own reader."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", path],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_wandb_one_offline_run_per_trial_with_config_history_lineage_tags_and_exit_code(
    tmp_path, monkeypatch
):
    pytest.importorskip("wandb")
    _wandb_env(monkeypatch, tmp_path)
    settings = LoggerSettings(wandb=WandbSettings("proj", mode="offline", dir=str(tmp_path)))
    for number, state in ((3, "COMPLETE"), (5, "FAIL")):
        loggers = open_loggers(settings, "s", number)
        assert loggers is not None
        loggers.evaluation(10, {"val_accuracy": 0.5})  # nothing yet: written at the end
        loggers.end(end(number, state))
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 2
    runs = {}
    for f in files:
        records = _wandb_records(f)
        by_type: dict[str, list] = {}
        for r in records:
            by_type.setdefault(r["type"], []).append(r[r["type"]])
        (run,) = by_type["run"]
        runs[run["display_name"]] = (run, by_type)
    assert sorted(runs) == ["trial-00003", "trial-00005"]
    run, records = runs["trial-00003"]
    assert run["project"] == "proj" and run["run_group"] == "s"
    config = run["config"]["update"]
    assert {k: config[k] for k in HPARAMS} == HPARAMS
    assert config["hpsearch.parent_trial"] == 4 and config["hpsearch.generation"] == 2
    assert config["hpsearch.parent_checkpoint"] == "ck-4-final"
    assert config["hpsearch.fork_step"] == 5
    assert config["hpsearch.study"] == "s" and config["hpsearch.trial"] == 3
    assert sorted(run["tags"]) == sorted(
        ["hpsearch.parent_trial=4", "hpsearch.parent_checkpoint=ck-4-final",
         "hpsearch.fork_step=5", "hpsearch.generation=2", "hpsearch.state=COMPLETE"]
    )  # fmt: skip
    history = [(h["step"]["num"], h["item"]["val_accuracy"], h["item"]["val_loss"])
               for h in records["history"]]  # fmt: skip
    assert history == [(10, 0.5, 1.25), (20, 0.75, 0.5)]
    summary = {k: v for s in records["summary"] for k, v in s["update"].items()}
    assert summary["hpsearch.state"] == "COMPLETE"
    assert records["exit"] == [{}] or records["exit"][0].get("exit_code", 0) == 0
    run, records = runs["trial-00005"]
    assert "hpsearch.state=FAIL" in run["tags"] and records["exit"][0]["exit_code"] == 1


def test_the_loggers_section_of_the_study_file(tmp_path, monkeypatch):
    path = write_study(tmp_path, loggers={"tensorboard": "tb", "mlflow": "file:./ml"})
    s = load_study_file(path).loggers
    # relative to the study file, as every path in it: the workers' cwd may differ
    assert s.tensorboard == str(tmp_path / "tb") and s.mlflow == f"file://{tmp_path / 'ml'}"
    s = load_study_file(write_study(tmp_path, loggers={"mlflow": "sqlite:///ml.db"})).loggers
    assert s.mlflow == f"sqlite:///{tmp_path / 'ml.db'}" and s.tensorboard is None
    s = load_study_file(write_study(tmp_path, loggers={"tensorboard": True})).loggers
    assert s.tensorboard == str(tmp_path / "runs" / "tiny" / "tensorboard")
    uri = "http://mlflow.example:5000"
    assert load_study_file(write_study(tmp_path, loggers={"mlflow": uri})).loggers.mlflow == uri
    off = load_study_file(write_study(tmp_path)).loggers
    assert off.tensorboard is None and off.mlflow is None and off.wandb is None
    wb = load_study_file(write_study(tmp_path, loggers={"wandb": {"project": "p"}})).loggers
    assert wb.wandb == WandbSettings("p", dir=str(tmp_path / "runs" / "tiny"))
    given = {"project": "p", "entity": "team", "mode": "offline", "dir": "wb"}
    wb = load_study_file(write_study(tmp_path, loggers={"wandb": given})).loggers
    assert wb.wandb == WandbSettings("p", "team", "offline", str(tmp_path / "wb"))
    cases = {
        "loggers.tensorbord: unknown key; did you mean 'tensorboard'?": {"tensorbord": "tb"},
        "loggers.tensorboard: must be a non-empty string, got 3": {"tensorboard": 3},
        "loggers.tensorboard: must be a local directory (or true), got 's3://b/tb'": {
            "tensorboard": "s3://b/tb"
        },
        "loggers.wandb.project: required key is missing; add it, e.g. `project: my-project`": {
            "wandb": {"entity": "team"}
        },
        "loggers.wandb.mode: must be one of online, offline, disabled, got 'offlin'": {
            "wandb": {"project": "p", "mode": "offlin"}
        },
        "loggers.wandb.projct: unknown key; did you mean 'project'?": {"wandb": {"projct": "p"}},
    }
    for message, section in cases.items():
        with pytest.raises(StudyFileError) as err:
            load_study_file(write_study(tmp_path, loggers=section))
        assert f"{path}: {message}" in str(err.value)

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))  # fmt: skip
    with pytest.raises(StudyFileError) as err:
        load_study_file(write_study(tmp_path, loggers={"mlflow": "sqlite:///ml.db"}))
    assert str(err.value) == (
        f"{path}: loggers.mlflow: logging to mlflow needs the mlflow package, which is not "
        "installed; install it with pip install 'hpsearch[mlflow]', or remove the line"
    )
    # a command that only reads the study (status, export) does not need it
    load_study_file(write_study(tmp_path, loggers={"mlflow": "sqlite:///ml.db"}), writable=False)
