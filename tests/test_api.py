"""The Python API: `hpsearch.run(task=..., config={...})` checks a mapping exactly as a study file
is checked, runs it, and returns the study; `hpsearch.load(...).best_model()` rebuilds the best
model through the Task from its final checkpoint."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
import torch
import yaml
from digits import DigitsMLP  # examples/, see conftest

import hpsearch
from hpsearch.api import STUDY_FILE, _task_spec
from hpsearch.cli import main
from hpsearch.config.taskload import load_task
from studyutil import DIGITS


class NotebookTask(DigitsMLP):
    """What a class defined in a notebook cell looks like: it lives in __main__."""


NotebookTask.__module__ = "__main__"


def _config(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "api",
        "seed": 0,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "checkpoints": {"every": 0.5, "keep_best": 1},
        "warmup": {"epochs": 1, "hparams": {"lr": 1e-2, "batch_size": 64, "hidden": 32}},
        "trials": {"n": 3, "epochs": 0.5},
        "search_space": {"lr": {"float": (1e-3, 3e-2), "log": True}},  # a tuple, as Python has it
        "sampler": {"name": "RandomSampler"},
    }
    doc.update(overrides)
    return doc


def test_a_notebook_runs_a_study_and_gets_the_best_model_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["__main__"], "NotebookTask", NotebookTask, raising=False)
    with pytest.raises(hpsearch.UsageError, match=r"defined in __main__.*workers=1"):
        hpsearch.run(task=NotebookTask, config=_config(), workers=2, base_dir=tmp_path)
    study = hpsearch.run(task=NotebookTask, config=_config(), base_dir=tmp_path)
    assert "study api: 3 finished trials" in capsys.readouterr().out  # the CLI's summary
    run_dir = tmp_path / "runs" / "api"
    with study:
        assert study.study_file == str(run_dir / STUDY_FILE)
        assert study.summary is not None and study.summary.ran == 3
        frame = study.dataframe()
        best = study.best()
        assert best is not None and best.value == frame["value"].max()
        assert study.summary.best_number == best.number
        model = study.best_model()
        _, val = NotebookTask().datasets()
        loader = torch.utils.data.DataLoader(val, batch_size=256)
        with torch.no_grad():
            assert NotebookTask().evaluate(model, loader)["val_accuracy"] == best.value
        gone = [n for n in frame["number"] if n != best.number]  # keep_best: 1
        with pytest.raises(hpsearch.HpsearchError, match=f"trial {gone[0]}'s final checkpoint"):
            study.best_model(int(gone[0]))
    with open(run_dir / STUDY_FILE) as f:
        written = yaml.safe_load(f)
    assert written["task"] == "__main__:NotebookTask"
    assert written["storage"] == f"sqlite:///{run_dir / 'study.db'}"
    assert written["search_space"]["lr"]["float"] == [1e-3, 3e-2]
    assert main(["status", str(run_dir / STUDY_FILE)]) == 0  # the commands read it too
    with hpsearch.load(run_dir) as again:  # by its run directory
        assert again.best() == best
    again_run = hpsearch.run(task=NotebookTask, config=_config(), base_dir=tmp_path)
    assert again_run.summary is not None and again_run.summary.ran == 0  # already has 3
    again_run.close()


BAD = [
    ({"trials": {"n": 0, "epochs": 1}}, "trials.n"),
    ({"search_space": {"lr": {"float": (0.1, 0.01)}}}, "search_space.lr"),
    ({"trails": {"n": 3}}, ""),
    ({"warmup": {"epochs": 1, "hparams": {"batch_size": 64}}}, "warmup.hparams.lr"),
    ({"objective": {"metric": "val_accuracy", "direction": "up"}}, "objective.direction"),
]


@pytest.mark.parametrize(("change", "key"), BAD)
def test_a_mapping_gets_the_study_files_messages(tmp_path, change, key):
    config = {**_config(), **change, "task": DIGITS}
    with pytest.raises(hpsearch.StudyFileError) as from_python:
        hpsearch.run(config=config, base_dir=tmp_path)
    path = tmp_path / "same.yaml"
    path.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    with pytest.raises(hpsearch.StudyFileError) as from_file:
        hpsearch.run(config=str(path))
    assert from_python.value.key == from_file.value.key
    assert key in from_python.value.key
    assert str(from_python.value) == str(from_file.value).replace(str(path), "config", 1)
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_a_config_that_holds_itself_is_refused_by_key(tmp_path) -> None:
    """Issue 20: a self-referential config gave a bare RecursionError."""
    config = {**_config(), "task": DIGITS, "data": {}}
    config["data"]["again"] = config["data"]
    with pytest.raises(hpsearch.StudyFileError) as e:
        hpsearch.run(config=config, base_dir=tmp_path)
    assert e.value.key == "data.again" and "refers back to data" in str(e.value)
    config["data"] = {"listed": [1, config]}
    with pytest.raises(hpsearch.StudyFileError, match=r"data\.listed\.1: refers back to the whole"):
        hpsearch.run(config=config, base_dir=tmp_path)
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(500):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(hpsearch.StudyFileError, match="nested more than 100 levels"):
        hpsearch.run(config={**_config(), "task": DIGITS, "data": deep}, base_dir=tmp_path)
    shared = {"float": [1e-3, 3e-2], "log": True}  # one value used twice is no cycle
    twice = {**_config(search_space={"lr": shared, "weight_decay": shared}), "task": DIGITS}
    twice["trials"] = {"n": 0, "epochs": 1}
    with pytest.raises(hpsearch.StudyFileError, match=r"trials\.n"):  # read on: the next mistake
        hpsearch.run(config=twice, base_dir=tmp_path)
    assert not (tmp_path / "runs").exists()


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, list | tuple) else v


def test_how_a_task_is_named() -> None:
    file_task = load_task(DIGITS)  # imported from a file: other processes import it by path
    assert _task_spec(file_task, 2) == DIGITS
    assert _task_spec(hpsearch.Task, 2) == "hpsearch.task:Task"

    class Local(DigitsMLP):
        pass

    with pytest.raises(hpsearch.UsageError, match="top level of a module"):
        _task_spec(Local, 1)
    with pytest.raises(hpsearch.UsageError, match="given twice"):
        hpsearch.run(task=DIGITS, config={**_config(), "task": DIGITS})
    with pytest.raises(hpsearch.UsageError, match="mapping"):
        hpsearch.run(task=DIGITS, config=[("name", "x")])  # type: ignore[arg-type]


def test_load_names_what_is_missing(tmp_path) -> None:
    with pytest.raises(hpsearch.UsageError, match=f"no {STUDY_FILE} in this directory"):
        hpsearch.load(tmp_path)
    with pytest.raises(hpsearch.UsageError, match="no such study file or run directory"):
        hpsearch.load(os.path.join(tmp_path, "nothing.yaml"))
