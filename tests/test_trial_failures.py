"""What a task raises fails one trial, said as the task's, with its traceback kept: an error or
an out-of-memory in `model()` at a node's start, a task's own state that cannot be loaded (never
turned into "that checkpoint is unusable"), and children that all fail in `evaluate`. A run that
leaves failed trials exits 1 with a summary of them; `--debug` prints each traceback live."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.search.records import trial_attr
from hpsearch.search.session import Session
from studyutil import ROOT, write_study

TREE = {
    "warmup": None,
    "tree": {"roots": 2, "rungs": [0.5, 1.0], "keep": 0.5, "children": 2, "probe": 0,
             "hparams": {"weight_decay": 1e-4, "batch_size": 64}},
    "trials": {"epochs": 1, "eval_every": 0.25, "retries": 0, "max_failures": 100},
    "schedule": {"name": "wsd", "decay": 0.25},
    "search_space": {"lr": {"float": [1e-3, 3e-2], "log": True},
                     "hidden": {"categorical": [8, 16, 24]}},
}  # fmt: skip

LR_ONLY = {"lr": TREE["search_space"]["lr"]}
FIXED_WIDTH = {**TREE["tree"], "hparams": {"weight_decay": 1e-4, "batch_size": 64, "hidden": 8}}

TASKS = """
import sys
sys.path.insert(0, {examples!r})
import torch
from digits import DigitsMLP


class WidthFails(DigitsMLP):
    def model(self, hparams):
        if int(hparams["hidden"]) == 16:
            raise ValueError("no model of width 16")
        if int(hparams["hidden"]) == 24:
            raise torch.OutOfMemoryError("out of memory building width 24")
        return super().model(hparams)


class StateFails(DigitsMLP):
    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {{"seen": self.seen}}

    def load_state_dict(self, state):
        raise RuntimeError("a bug in load_state_dict")


class EvaluateFails(DigitsMLP):
    calls = 0

    def evaluate(self, model, loader):
        type(self).calls += 1
        if type(self).calls > 5:  # the check before training, the 2 roots' 2 evaluations each
            raise ArithmeticError("a metric that cannot be computed")
        return super().evaluate(model, loader)
"""


def _study(tmp_path: Path, task: str, **extra: object) -> str:
    (tmp_path / "failing.py").write_text(TASKS.format(examples=os.path.join(ROOT, "examples")))
    return write_study(
        tmp_path, name="tf", task=f"{tmp_path}/failing.py:{task}", **{**TREE, **extra}
    )


def _trials(path: str) -> list:
    s = Session.open(path, create=False)
    try:
        return s.study.get_trials()
    finally:
        s.close()


def test_model_raising_or_out_of_memory_fails_that_node_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study(tmp_path, "WidthFails", tree={**TREE["tree"], "roots": 4})
    s = Session.open(path)
    for hidden in (16, 24, 8, 8):  # roots 0 and 1 cannot be built, 2 and 3 can
        s.study.enqueue_trial({"hidden": hidden})
    s.close()
    for _ in range(2):  # before, the run died with a traceback and every rerun did the same
        assert main(["run", path]) == 1
        out = capsys.readouterr().out
        assert "Traceback" not in out
    trials = _trials(path)
    assert all(t.state != TrialState.RUNNING for t in trials)
    first, second = trials[0], trials[1]
    assert first.state == second.state == TrialState.FAIL
    assert trial_attr(first, "fail_kind") == "start" and trial_attr(second, "fail_kind") == "oom"
    reason = trial_attr(first, "fail_reason")
    assert reason.startswith("ValueError: no model of width 16 (the task's code: failing.py:")
    log = Path(trial_attr(first, "fail_log"))
    assert log.parent == tmp_path / "runs" / "tf" / "logs" / "tf"
    assert "Traceback" in log.read_text() and "raise ValueError" in log.read_text()
    assert "#0 start: ValueError: no model of width 16" in out and "#1 oom:" in out
    # not retried (the same values fail the same way); the tree grew without them
    assert not [t for t in trials if trial_attr(t, "retry_of") is not None]
    grown = {trial_attr(t, "generation") for t in trials if t.state == TrialState.COMPLETE}
    assert grown == {0, 1}


def test_a_task_error_while_restoring_is_the_tasks_not_an_unusable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study(tmp_path, "StateFails", search_space=LR_ONLY, tree=FIXED_WIDTH)
    assert main(["run", path]) == 1
    out = capsys.readouterr().out
    assert "cannot be used" not in out and "no usable checkpoint" not in out
    children = [t for t in _trials(path) if trial_attr(t, "generation") == 1]
    assert children and all(t.state == TrialState.FAIL for t in children)
    for t in children:
        assert trial_attr(t, "fail_kind") == "start"
        assert "RuntimeError: a bug in load_state_dict (the task's code: failing.py:" in (
            trial_attr(t, "fail_reason")
        )
        assert not trial_attr(t, "fallbacks")  # no checkpoint was blamed


def test_children_that_all_fail_in_evaluate_exit_1_with_their_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study(tmp_path, "EvaluateFails", search_space=LR_ONLY, tree=FIXED_WIDTH)
    assert main(["run", path, "--debug"]) == 1
    captured = capsys.readouterr()
    trials = _trials(path)
    roots = [t for t in trials if trial_attr(t, "generation") == 0]
    children = [t for t in trials if trial_attr(t, "generation") == 1]
    assert all(t.state == TrialState.COMPLETE for t in roots)
    assert children and all(t.state == TrialState.FAIL for t in children)
    assert f"{len(children)} trial(s) failed for good:" in captured.out
    # --debug: each traceback as it happens, on stderr; and every one kept in its trial's log
    assert captured.err.count("ArithmeticError: a metric that cannot be computed") == len(children)
    assert captured.err.count("Traceback (most recent call last)") == len(children)
    for t in children:
        assert "raise ArithmeticError" in Path(trial_attr(t, "fail_log")).read_text()


def test_the_trail_names_the_user_frame() -> None:
    from hpsearch.search import trail

    def users_code() -> None:
        raise KeyError("x")

    try:
        users_code()
    except KeyError as exc:
        text = trail.describe(exc)
    assert text.startswith("KeyError: 'x' (the task's code: test_trial_failures.py:")
    assert text.endswith(", users_code)")
    assert textwrap.dedent(text) == text
