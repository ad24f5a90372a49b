"""The loggers against the real libraries: written to a temporary directory and read back with the
library's own reader (TensorBoard's EventAccumulator, MLflow's MlflowClient on a file store), a
fork-tree trial's lineage included; and the `loggers:` section of the study file. A whole study
with both loggers on is in test_metrics.py."""

from __future__ import annotations

import importlib.util

import pytest

from hpsearch.config import load_study_file
from hpsearch.errors import StudyFileError
from hpsearch.search.loggers import Loggers, MlflowLogger, TensorBoardLogger, TrialEnd, _batches
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
    batches = _batches(list(range(2500)), list(range(150)), list(range(5)))
    assert all(len(b["params"]) <= 100 and len(b["tags"]) <= 100 for b in batches)
    assert all(len(b["metrics"]) + len(b["params"]) + len(b["tags"]) <= 1000 for b in batches)
    assert sum(len(b["metrics"]) for b in batches) == 2500 and len(batches) == 3
    assert [len(b["params"]) for b in batches] == [100, 50, 0]
    assert _batches([], [], []) == [{"metrics": [], "params": [], "tags": []}]


def test_a_failing_logger_warns_once_and_the_others_go_on(tmp_path, capsys):
    class Broken:
        def evaluation(self, step, metrics):
            raise OSError("disk full")

        def end(self, info):
            raise AssertionError("never called once broken")

        def close(self):
            pass

    class Kept:
        def __init__(self):
            self.steps = []

        def evaluation(self, step, metrics):
            self.steps.append(step)

        def end(self, info):
            self.steps.append("end")

        def close(self):
            pass

    kept = Kept()
    loggers = Loggers([Broken(), kept])
    loggers.evaluation(1, {"m": 1.0})
    loggers.evaluation(2, {"m": 1.0})
    loggers.end(end(0))
    assert kept.steps == [1, 2, "end"]
    err = capsys.readouterr().err
    assert err.count("warning: Broken failed and is off for this trial: OSError: disk full") == 1


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
    assert off.tensorboard is None and off.mlflow is None
    cases = {
        "loggers.tensorbord: unknown key; did you mean 'tensorboard'?": {"tensorbord": "tb"},
        "loggers.tensorboard: must be a non-empty string, got 3": {"tensorboard": 3},
        "loggers.tensorboard: must be a local directory (or true), got 's3://b/tb'": {
            "tensorboard": "s3://b/tb"
        },
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
