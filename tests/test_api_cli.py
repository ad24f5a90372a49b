"""The Python API and the CLI agree: a study that `hpsearch.run` made in a notebook's folder is
resumed, replayed, exported and plotted by the `hpsearch` command in that folder, with no
environment set by hand (issue 22: `hpsearch replay runs/cnn-api/study.yaml` failed with "no
module named 'cnn_task'" unless PYTHONPATH=.)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import hpsearch
from hpsearch.api import STUDY_FILE
from hpsearch.config.taskload import load_task
from hpsearch.errors import TaskError

SRC = str(Path(hpsearch.__file__).resolve().parents[1])

# a notebook's own module, importing a module next to it
TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hpsearch
from cnn_parts import make_model


class CnnTask(hpsearch.Task):
    def datasets(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
        return TensorDataset(x, y), TensorDataset(x[:16], y[:16])

    def model(self, hparams):
        return make_model(hparams)

    def optimizer(self, model, hparams):
        return torch.optim.SGD(model.parameters(), lr=hparams["lr"])

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model, loader):
        x, y = next(iter(loader))
        return {"val_loss": float(nn.functional.cross_entropy(model(x), y))}
"""
PARTS = """
from torch import nn


def make_model(hparams):
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(hparams["dropout"]),
                         nn.Linear(8, 3))
"""
CONFIG = {
    "name": "cnn-api",
    "seed": 0,
    "objective": {"metric": "val_loss", "direction": "minimize"},
    "checkpoints": {"every_steps": 4, "keep_best": 2},
    "warmup": {"steps": 4, "hparams": {"lr": 0.05, "batch_size": 16, "dropout": 0.0}},
    "trials": {"n": 2, "steps": 4},
    "search_space": {"lr": {"float": [0.01, 0.1], "log": True}},
    "sampler": {"name": "RandomSampler"},
}
# every command in one process started as the `hpsearch` script starts (`-P`: no current
# directory on sys.path), with PYTHONPATH holding hpsearch only
PROBE = """
import contextlib, io, json, sys, time
from hpsearch.cli import main
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    t = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(args)
    out.append([args[0], rc, err.getvalue()[-400:], round(time.monotonic() - t, 2)])
print(json.dumps(out))
"""


@pytest.fixture
def notebook_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with the task module, on sys.path and the current directory, as a notebook
    started there has it."""
    (tmp_path / "cnn_task.py").write_text(TASK)
    (tmp_path / "cnn_parts.py").write_text(PARTS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("cnn_task", "cnn_parts"):
        sys.modules.pop(name, None)


def test_a_study_made_by_the_api_is_used_by_the_cli_in_the_same_folder(notebook_dir: Path) -> None:
    from cnn_task import CnnTask  # type: ignore[import-not-found]

    with hpsearch.run(task=CnnTask, config=CONFIG) as study:
        assert study.summary is not None and study.summary.ran == 2
    study_file = os.path.join("runs", "cnn-api", STUDY_FILE)
    with open(study_file) as f:
        assert yaml.safe_load(f)["task"] == "../../cnn_task.py:CnnTask"  # moves with the project
    # resume trains one more trial; replay retrains the winner (both import the task)
    commands = [["resume", study_file, "--trials", "3"], ["replay", study_file],
                ["export", study_file, "-o", "trials.csv"], ["plot", study_file, "-o", "p.png"],
                ["status", study_file]]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-P", "-c", PROBE, json.dumps(commands)],
        capture_output=True, text=True, timeout=300, cwd=notebook_dir,
        env={**os.environ, "PYTHONPATH": SRC},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [(name, rc) for name, rc, *_ in results] == [
        ("resume", 0), ("replay", 0), ("export", 0), ("plot", 0), ("status", 0)
    ], results  # fmt: skip
    assert (notebook_dir / "trials.csv").read_text().count("\n") == 4  # a header and 3 trials
    # and the API reopens it as the CLI left it, under the spelling the study was made with
    with hpsearch.run(task=CnnTask, config=CONFIG, trials=3) as again:
        assert again.summary is not None and again.summary.ran == 0


def test_a_study_made_before_tasks_were_written_by_path_keeps_its_spelling(
    notebook_dir: Path,
) -> None:
    from cnn_task import CnnTask

    run_dir = notebook_dir / "runs" / "cnn-api"
    run_dir.mkdir(parents=True)
    (run_dir / STUDY_FILE).write_text(yaml.safe_dump({**CONFIG, "task": "cnn_task:CnnTask"}))
    with hpsearch.run(task=CnnTask, config={**CONFIG, "trials": {"n": 1, "steps": 4}}) as study:
        assert study.summary is not None and study.summary.ran == 1
    assert yaml.safe_load((run_dir / STUDY_FILE).read_text())["task"] == "cnn_task:CnnTask"


def test_a_task_file_inside_a_package_is_imported_as_part_of_it(tmp_path: Path) -> None:
    pkg = tmp_path / "proj" / "tasks"
    pkg.mkdir(parents=True)
    (tmp_path / "proj" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "parts.py").write_text(PARTS)
    (pkg / "cnn.py").write_text(TASK.replace("from cnn_parts import", "from .parts import"))
    try:
        cls = load_task("proj/tasks/cnn.py:CnnTask", study_path=str(tmp_path / "study.yaml"))
        assert cls.__module__ == "proj.tasks.cnn"
        assert cls is importlib.import_module("proj.tasks.cnn").CnnTask
        assert str(tmp_path) not in sys.path  # on sys.path only while it is imported
    finally:
        for name in [m for m in sys.modules if m == "proj" or m.startswith("proj.")]:
            del sys.modules[name]


def test_a_class_of_another_processs_main_is_refused_with_the_fix() -> None:
    with pytest.raises(TaskError) as e:
        load_task("__main__:NotebookTask")
    assert "defined in __main__" in str(e.value) and "path/to/file.py:NotebookTask" in str(e.value)
