"""Every metric evaluate() returns is recorded on its trial (once an attempt, not a storage write
per evaluation), exported, and logged to TensorBoard and MLflow; the objective is named for the
dashboard; a final checkpoint that GC deleted is marked. One real study serves every test here:
it is stopped by Ctrl-C in the middle of a trial and run again, so one trial's record spans two
attempts."""

from __future__ import annotations

import importlib.util
import os
import textwrap

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from pandas.testing import assert_frame_equal

from hpsearch.cli import main
from hpsearch.report.export import read_export
from hpsearch.search.session import Session
from studyutil import DIGITS, write_study

# the loss() call that sends Ctrl-C: 23 steps of warm-up (one epoch at batch size 64), then mid
# way through the first trial (12 steps, evaluated about every 3)
STOP_AT_STEP = 23 + 7

TASK = f"""
import os, signal
import sys
sys.path.insert(0, {os.path.dirname(DIGITS.split(":")[0])!r})
from digits import DigitsMLP

calls = 0


class StoppedOnce(DigitsMLP):
    def loss(self, model, batch):
        global calls
        calls += 1
        flag = os.environ["STOP_FLAG"]
        if calls == {STOP_AT_STEP} and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the run stops cleanly
        return super().loss(model, batch)
"""


LOGGERS = {"tensorboard": "tb", "mlflow": "mlruns"}  # a plain path: an MLflow file store


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    (tmp / "task.py").write_text(textwrap.dedent(TASK))
    path = write_study(
        tmp, name="metrics", task="task.py:StoppedOnce",
        warmup={"epochs": 1, "hparams": {"lr": 1e-2, "dropout": 0.1, "batch_size": 64,
                                         "hidden": 32}},
        trials={"n": 2, "epochs": 0.5, "eval_every": 0.125},
        checkpoints={"every": 0.25, "keep_best": 1},
        search_space={"lr": {"float": [1e-3, 3e-2], "log": True}},
        sampler={"name": "RandomSampler"}, pruner=None,
        loggers={name: str(tmp / where) for name, where in LOGGERS.items()
                 if importlib.util.find_spec(name)},
    )  # fmt: skip
    writes: list[str] = []
    rdb = optuna.storages.RDBStorage
    real = rdb._set_trial_attr_without_commit  # every attribute write, batched or not

    def counted(self, session, model_cls, trial_id, key, value):  # the real write, counted
        writes.append(key)
        return real(self, session, model_cls, trial_id, key, value)

    mp = pytest.MonkeyPatch()
    mp.setenv("STOP_FLAG", str(tmp / "stopped"))
    mp.setattr(rdb, "_set_trial_attr_without_commit", counted)
    try:
        assert main(["run", path]) == 130  # stopped by the Ctrl-C mid-trial
        assert main(["run", path]) == 0
    finally:
        mp.undo()
    yield path, writes, tmp


def _trials(path):
    s = Session.open(path, create=False)
    try:
        return s.study.get_trials(), s.lineage.checkpoints(), s.study.metric_names
    finally:
        s.close()


def test_every_metric_of_every_evaluation_is_on_the_trial(study):
    path, writes, _ = study
    trials, _, names = _trials(path)
    assert names == ["val_accuracy"]  # what optuna-dashboard shows instead of "Objective 0"
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        evals = t.user_attrs["hpsearch.evaluations"]
        assert [e["index"] for e in evals] == [1, 2, 3, 4]
        assert all(set(e) == {"step", "samples", "index", "val_accuracy", "val_loss"}
                   for e in evals)  # fmt: skip
        assert [e["step"] for e in evals] == sorted({e["step"] for e in evals})
        # the objective's are the values Optuna was told; val_loss is recorded beside them
        assert {e["index"]: e["val_accuracy"] for e in evals} == t.intermediate_values
        assert evals[-1]["val_accuracy"] == t.value
        assert all(0 < e["val_loss"] < 5 for e in evals)
    # written once at the end of each attempt: 2 trials, one of them stopped and continued --
    # never a storage write per evaluation (8 of them)
    assert writes.count("hpsearch.evaluations") == 3


def test_a_stopped_trial_keeps_the_evaluations_of_its_first_attempt(study):
    path, _, _ = study
    s = Session.open(path, create=False)
    first = s.study.get_trials()[0]  # stopped by Ctrl-C after 2 of its 4 evaluations
    attempts = s.lineage.attempts(0)
    s.close()
    assert len(attempts) == 2  # and continued by the second run
    evals = first.user_attrs["hpsearch.evaluations"]
    assert len(evals) == 4 and evals[1]["step"] < STOP_AT_STEP < evals[2]["step"]


def test_gc_marks_the_final_checkpoints_it_deleted(study):
    path, _, _ = study
    trials, rows, _ = _trials(path)
    status = {r.id: r.status for r in rows}
    best = max(trials, key=lambda t: t.value)
    for t in trials:
        final = t.user_attrs["hpsearch.final_checkpoint"]
        deleted = t.user_attrs.get("hpsearch.final_checkpoint_deleted")
        if t.number == best.number:  # keep_best: 1
            assert status[final] == "committed" and deleted is None
        else:  # marked (as a fresh process reads the database): no dangling id on the dashboard
            assert status[final] == "deleted"
            assert deleted == (f"deleted by garbage collection: trial {t.number} is no longer "
                               "among the best 1")  # fmt: skip


def test_export_has_a_column_per_metric_and_the_long_table(study, capsys):
    path, _, tmp = study
    trials, _, _ = _trials(path)
    for suffix in (".csv", ".parquet"):
        out, long = tmp / f"trials{suffix}", tmp / f"evaluations{suffix}"
        assert main(["export", path, "-o", str(out)]) == 0
        assert main(["export", path, "--evaluations", "-o", str(long)]) == 0
        df = read_export(out).set_index("number")
        for t in trials:
            last = t.user_attrs["hpsearch.evaluations"][-1]
            assert df.loc[t.number, "metric_val_accuracy"] == t.value == last["val_accuracy"]
            assert df.loc[t.number, "metric_val_loss"] == last["val_loss"]
        assert df["generation"].isna().all() and df["parent_trial"].isna().all()  # no tree
        assert df["final_checkpoint_deleted"].notna().sum() == 1
        ev = read_export(long)
        assert list(ev.columns) == ["number", "index", "step", "samples", "epoch",
                                    "metric_val_accuracy", "metric_val_loss"]  # fmt: skip
        assert len(ev) == 8 and ev["number"].tolist() == [n for n in range(2) for _ in range(4)]
        by_trial = ev.groupby("number")["metric_val_loss"].apply(list).to_dict()
        for t in trials:
            assert by_trial[t.number] == [
                e["val_loss"] for e in t.user_attrs["hpsearch.evaluations"]
            ]
        if suffix == ".parquet":  # plain pandas reads the same table, dtypes and all
            assert_frame_equal(pd.read_parquet(long), ev)
    assert "wrote" in capsys.readouterr().out


def test_tensorboard_got_every_evaluation_of_every_trial(study):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    path, _, tmp = study
    trials, _, _ = _trials(path)
    for t in trials:
        ea = event_accumulator.EventAccumulator(
            str(tmp / "tb" / "metrics" / f"trial-{t.number:05d}")
        )
        ea.Reload()
        evals = t.user_attrs["hpsearch.evaluations"]
        for name in ("val_accuracy", "val_loss"):
            # the stopped trial's continuation re-evaluates nothing it had evaluated: no repeats
            got = [(e.step, e.value) for e in ea.Scalars(name)]
            assert got == [(e["step"], pytest.approx(e[name], rel=1e-6)) for e in evals]
        assert "_hparams_/session_start_info" in ea.PluginTagToContent("hparams")


def test_mlflow_got_one_run_per_trial_with_its_lineage(study):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    path, _, tmp = study
    trials, _, _ = _trials(path)
    client = MlflowClient(tracking_uri=f"file://{tmp / 'mlruns'}")
    runs = client.search_runs([client.get_experiment_by_name("metrics").experiment_id])
    by_trial = {int(r.data.tags["hpsearch.trial"]): r for r in runs}
    assert sorted(by_trial) == [0, 1]  # the stopped trial once, when it ended
    for t in trials:
        run = by_trial[t.number]
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{t.number:05d}"
        assert float(run.data.params["lr"]) == t.params["lr"]
        assert (
            run.data.tags["hpsearch.parent_checkpoint"]
            == t.user_attrs["hpsearch.parent_checkpoint"]
        )
        assert run.data.tags["hpsearch.fork_step"] == "23"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        evals = t.user_attrs["hpsearch.evaluations"]
        assert [(m.step, m.value) for m in history] == [(e["step"], e["val_loss"]) for e in evals]
