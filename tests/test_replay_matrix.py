"""Replay conformance: in each configuration users run, every kept final checkpoint of the study
is what `hpsearch replay` retrains from scratch, bit for bit, value included.

The matrix (one study each, every final kept): the `wsd` schedule with rungs between batches and
batch-size forks; `cosine` with rungs on batch boundaries; a task's own scheduler; gradient
accumulation; four children per survivor and a cooldown probe; a lineage holding a retried node
and a node taken over after a kill at its start; budgets in steps (a fork from a base, and the
classic twin). The quickstart's own winner replays in tests/test_study_run.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.search.records import trial_attr
from hpsearch.search.replay import replay
from hpsearch.search.session import Session
from hpsearch.testing.points import kill_at_point
from replay_tasks import FLAKY_ENV
from studyutil import ROOT

SPACE = {"lr": {"float": [1e-3, 3e-2], "log": True}, "dropout": {"float": [0.0, 0.3]},
         "weight_decay": {"float": [1e-5, 1e-2], "log": True}}  # fmt: skip
TREE = {"roots": 2, "rungs": [0.3, 0.6, 1.0], "keep": 0.5, "children": 2, "hparams": {}}


def _doc(task: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "rm",
        "task": f"replay_tasks:{task}",
        "seed": 3,
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "checkpoints": {"every": 0.5, "keep_best": 1000},
        "tree": TREE,
        "trials": {"epochs": 1.5, "eval_every": 0.5},
        "schedule": {"name": "wsd", "warmup": 0.05, "decay": 0.3},
        "search_space": {**SPACE, "batch_size": {"categorical": [32, 48, 64]}},
        "sampler": {"name": "TPESampler", "n_startup_trials": 2},
        "pruner": {"name": "NopPruner"},
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


BASE_STEPS = {"tree": None, "schedule": {"name": "cosine", "final": 0.1},
              "warmup": {"steps": 7, "hparams": {"lr": 0.01, "dropout": 0.1, "batch_size": 32,
                                                 "weight_decay": 1e-4}},
              "trials": {"n": 3, "steps": 11, "eval_every_steps": 4}}  # fmt: skip

MATRIX: dict[str, dict[str, Any]] = {
    "wsd, rungs between batches, batch-size forks": _doc("Odd"),
    "cosine, rungs on batch boundaries": _doc(
        "Even", trials={"epochs": 1, "eval_every": 0.25},
        tree={**TREE, "rungs": [0.25, 0.5, 1.0]}, schedule={"name": "cosine", "final": 0.1},
        search_space={**SPACE, "batch_size": {"categorical": [32, 64]}},
    ),
    "the task's scheduler": _doc("Scheduled", schedule=None),
    "gradient accumulation": _doc(
        "Odd", training={"accumulate_samples": 96},
        search_space={**SPACE, "batch_size": {"categorical": [32, 48, 96]}},
    ),
    "4 children per survivor, a probe": _doc(
        "Odd", tree={**TREE, "roots": 2, "rungs": [0.5, 1.0], "children": 4, "probe": 0.1}
    ),
    "a retried and a taken-over node": _doc("Flaky"),
    "steps budgets, fork from a base": _doc("Odd", **BASE_STEPS),
}  # fmt: skip


def _env() -> dict[str, str]:
    tests = os.path.dirname(os.path.abspath(__file__))
    paths = [tests, os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _replays(path: str, *, classic: bool = False) -> list[int]:
    """Replay every COMPLETE trial whose final checkpoint is kept; return their numbers."""
    s = Session.open(path, classic=classic, create=False)
    try:
        done = [t for t in s.study.get_trials() if t.state == TrialState.COMPLETE]
        assert done
        for t in done:
            assert s.store.exists(trial_attr(t, "final_checkpoint"))
            _, r = replay(s, t.number, say=lambda _: None)
            assert r.compared > 0 and r.differs == [], f"trial {t.number}: {r.differs[:3]}"
            assert r.exact, f"trial {t.number}: {r.metrics} against {t.value}"
        return [t.number for t in done]
    finally:
        s.close()


@pytest.mark.parametrize("name", list(MATRIX))
def test_every_kept_final_replays_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(MATRIX[name], sort_keys=False))
    if name.startswith("a retried"):
        flag = tmp_path / "flaky"
        flag.write_text("12")  # the first run's 12th step (a root's) raises once: a retry
        monkeypatch.setenv(FLAKY_ENV, str(flag))
        # killed as its 4th node starts (a child of generation 1): the rerun takes it over
        kill_at_point([sys.executable, "-m", "hpsearch", "run", str(path)], "trial.starting", 4,
                      env=_env(), log=str(tmp_path / "killed.log"))  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path)], env=_env(),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        s = Session.open(str(path), create=False)
        trials = s.study.get_trials()
        s.close()
        assert any(trial_attr(t, "retry_of") is not None for t in trials)
        assert any(a.resumed_from for a in _attempts(str(path)))  # a takeover continued one
    else:
        assert main(["run", str(path)]) == 0
    _replays(str(path))
    if name.startswith("steps"):  # and the classic twin of the same file
        assert main(["run", str(path), "--no-fork", "--trials", "2"]) == 0
        _replays(str(path), classic=True)


def _attempts(path: str) -> list[Any]:
    s = Session.open(path, create=False)
    try:
        return [a for a in s.lineage.attempts() if a.trial >= 0]
    finally:
        s.close()
