"""The four tasks users brought (tests/family_tasks.py): a CNN with BatchNorm, tied embeddings,
augmentation in DataLoader workers, and a task that fails after a restore. Each passes
`check-resume` (or is reported without a traceback), and a study of each that is SIGKILLed
after checkpoint commits and rerun ends identical to an uninterrupted one."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.search.records import PREFIX as ATTR
from hpsearch.search.session import Session
from hpsearch.testing import StudyPaths, kill_at_events
from studyutil import write_study

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = os.path.join(HERE, "family_tasks.py")
LM = {"objective": {"metric": "val_loss", "direction": "minimize"}}
FAMILIES = {
    "DigitsCNN": {},
    "TiedCharLM": LM,
    "AugmentedDigits": {"data": {"num_workers": 2}},
}
SMALL = {"lr": 1e-2, "dropout": 0.1, "batch_size": 64, "weight_decay": 1e-4, "hidden": 8}


def _study(tmp_path, cls: str, **extra) -> str:
    doc = {"warmup": {"epochs": 1, "hparams": SMALL}, **FAMILIES.get(cls, {}), **extra}
    return write_study(tmp_path, name=cls.lower(), task=f"{TASKS}:{cls}", **doc)


@pytest.mark.parametrize("cls", list(FAMILIES))
def test_check_resume_is_exact(cls, tmp_path, capsys):
    assert main(["check-resume", _study(tmp_path, cls), "--steps", "4"]) == 0
    assert capsys.readouterr().out.startswith("exact:")


def test_check_resume_reports_a_failing_task_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HPSEARCH_TEST_FIRST_PROCESS", str(os.getpid()))
    path = _study(tmp_path, "RaisesAfterRestore")
    assert main(["check-resume", path, "--steps", "3"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: training 3 steps after the restore failed: RuntimeError: the vocabulary" in err
    assert "Traceback" not in err and "--debug" in err


def _hpsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch", *args]


def _results(path: str) -> dict[int, tuple]:
    s = Session.open(path, create=False)
    out = {}
    for t in s.study.get_trials():
        final = t.user_attrs.get(ATTR + "final_checkpoint")
        weights = s.store.load(final).tensors["model"] if t.state == TrialState.COMPLETE else None
        out[t.number] = (t.state, t.params, t.value, dict(t.intermediate_values), weights)
    s.close()
    return out


# BatchNorm and tied embeddings, the families that broke; augmentation in workers is exact across
# kills by the zoo's data-augment entries (restored in a fresh process) and check-resume below
@pytest.mark.parametrize("cls", ["DigitsCNN", "TiedCharLM"])
def test_killed_and_rerun_study_ends_identical(cls, tmp_path):
    # small: each run is a fresh process; one kill after a commit forces a takeover
    study = {"warmup": {"epochs": 0.5, "hparams": SMALL},
             "trials": {"n": 2, "epochs": 0.5, "eval_every": 0.25},
             "checkpoints": {"every": 0.125, "keep_best": 10}}  # fmt: skip
    ref = _study(tmp_path / "ref", cls, **study)
    assert main(["run", ref]) == 0
    path = _study(tmp_path / "killed", cls, **study)
    kills = kill_at_events(_hpsearch("run", path), StudyPaths.of(path), 1, random.Random(1),
                           events=("commit",), most=2)  # fmt: skip
    assert len(kills) == 1 and kills[0].trial is not None
    done = subprocess.run(_hpsearch("run", path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    want, got = _results(ref), _results(path)
    assert sorted(want) == sorted(got)
    for n, (state, params, value, reports, weights) in want.items():
        assert got[n][:4] == (state, params, value, reports), f"trial {n} differs"
        if weights is not None:
            assert all(torch.equal(weights[k], got[n][4][k]) for k in weights), f"trial {n}"


def test_a_study_steps_reduce_lr_on_plateau_with_its_objective(tmp_path, capsys):
    study = {"warmup": {"epochs": 0.5, "hparams": SMALL},
             "trials": {"n": 2, "epochs": 0.5, "eval_every": 0.25}}  # fmt: skip
    path = _study(tmp_path, "PlateauDigits", **study)
    assert main(["run", path]) == 0
    s = Session.open(path, create=False)
    ckpt = s.store.load(s.lineage.checkpoints()[-1].id)
    s.close()
    assert ckpt.state["objective"] == "val_accuracy"
    assert ckpt.state["scheduler"]["mode"] == "max"
