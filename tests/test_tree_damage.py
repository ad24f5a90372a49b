"""Hostile data in a fork tree: damaged lineage attributes (a parent cycle, a generation that is
no integer or past the last rung) are reported once and left out of the tree and the winner, and
no command hangs or raises on them; a root enqueued by hand with a value its search space cannot
hold fails as `invalid` instead of crashing every run."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.search.records import PREFIX, trial_attr
from hpsearch.search.session import Session
from hpsearch.search.tree_nodes import check_nodes
from studyutil import SMALL_TREE, deadline, write_study

TREE = {**SMALL_TREE, "checkpoints": {"every": 0.5, "keep_best": 100}}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = write_study(tmp_path_factory.mktemp("grown"), name="dmg", **TREE)
    assert main(["run", path]) == 0
    return path


def _copy(path: str, tmp_path: Path) -> str:
    dst = tmp_path / "study"
    shutil.copytree(os.path.dirname(path), dst)
    return str(dst / os.path.basename(path))


def _set_attr(path: str, number: int, key: str, value: Any) -> None:
    """Write a trial's `hpsearch.<key>` straight into the database, as a damaged row would be."""
    db = os.path.join(os.path.dirname(path), "runs", "dmg", "study.db")
    with sqlite3.connect(db) as c:
        (tid,) = c.execute("select trial_id from trials where number=?", (number,)).fetchone()
        c.execute(
            "update trial_user_attributes set value_json=? where trial_id=? and key=?",
            (json.dumps(value), tid, PREFIX + key),
        )


def _nodes(path: str) -> dict[int, tuple[Any, Any]]:
    s = Session.open(path, create=False)
    try:
        return {t.number: (trial_attr(t, "generation"), trial_attr(t, "parent_trial"))
                for t in s.study.get_trials()}  # fmt: skip
    finally:
        s.close()


def _damage(path: str, how: str) -> int:
    """Damage one node of generation 1 that has children; return its number."""
    nodes = _nodes(path)
    parents = {p for _, p in nodes.values() if p is not None}
    node = min(n for n, (g, _) in nodes.items() if g == 1 and n in parents)
    if how == "cycle":  # its parent set to its own child: a loop through the tree
        child = min(n for n, (_, p) in nodes.items() if p == node)
        _set_attr(path, node, "parent_trial", child)
    elif how == "string":
        _set_attr(path, node, "generation", "abc")
    else:  # past the last rung: before, it became the winner and best/replay raised IndexError
        _set_attr(path, node, "generation", 99)
    return node


@pytest.mark.parametrize("how", ["cycle", "string", "past-the-last-rung"])
def test_damaged_lineage_is_reported_and_left_out_by_every_command(
    grown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    path = _copy(grown, tmp_path)
    node = _damage(path, how)
    capsys.readouterr()
    with deadline(120):
        for cmd in (["status"], ["tree"], ["best"], ["gc", "--dry-run"], ["export"],
                    ["plot", "-o", str(tmp_path / "p.png")]):  # fmt: skip
            assert main([cmd[0], path, *cmd[1:]]) == 0, cmd
            err = capsys.readouterr().err
            assert f"trial {node}: its place in the fork tree is damaged" in err, cmd
            assert "Traceback" not in err
        assert main(["replay", path]) == 0  # the winner is a valid node: it replays exactly
        out = capsys.readouterr().out
        assert f"trial {node}:" not in out.split("\n")[1]  # not in the winner's recipe
    s = Session.open(path, create=False)
    try:
        trials = s.study.get_trials()
        nodes = check_nodes(trials, s.settings.tree)
        assert node in nodes.damaged and node not in nodes.slots
        # its descendants have no valid parent either: left out with it
        assert all(n in nodes.damaged for n, t in enumerate(trials)
                   if trial_attr(t, "parent_trial") == node)  # fmt: skip
    finally:
        s.close()
    if how == "string":  # the run goes on without it: its slot is filled anew, said once
        with deadline(300):
            assert main(["run", path]) == 0
        out = capsys.readouterr().out
        assert out.count(f"trial {node}: its place in the fork tree is damaged") == 1
        s = Session.open(path, create=False)
        try:
            trials = s.study.get_trials()
            slots = check_nodes(trials, s.settings.tree).slots
            assert len(set(slots.values())) == len(slots)  # every slot once
            assert all(t.state.is_finished() for t in trials)
        finally:
            s.close()


def test_a_hand_enqueued_root_outside_the_search_space_fails_as_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = {"lr": {"float": [1e-4, 3e-2], "log": True},
             "batch_size": {"categorical": [32, 64, 128]}}  # fmt: skip
    path = write_study(tmp_path, name="inv", search_space=space, **TREE)
    Session.open(path).close()
    s = Session.open(path, create=False)
    s.study.enqueue_trial({"batch_size": 7})  # not among the choices
    s.study.enqueue_trial({"lr": 0.5, "batch_size": 64})  # outside the range
    s.study.enqueue_trial({"lr": 0.01, "batch_size": 64})  # a fine root
    s.close()
    for _ in range(2):  # before, every run crashed on it and left a trial RUNNING
        assert main(["run", path]) == 1  # a trial did not run as asked: not a clean run
        out = capsys.readouterr().out
        assert "Traceback" not in out
    assert "#0 invalid: enqueued with values its search space cannot hold: batch_size=7 is " \
           "not among its choices [32, 64, 128]" in out  # fmt: skip
    assert "#1 invalid:" in out and "lr=0.5 is outside [0.0001, 0.03]" in out
    s = Session.open(path, create=False)
    try:
        trials = s.study.get_trials()
        assert [t.state for t in trials[:2]] == [TrialState.FAIL] * 2
        assert all(trial_attr(t, "fail_kind") == "invalid" and not t.params for t in trials[:2])
        assert trials[2].params["lr"] == 0.01 and trial_attr(trials[2], "generation") == 0
        assert all(t.state != TrialState.RUNNING for t in trials)
        assert len(check_nodes(trials, s.settings.tree).slots) == 12  # the tree, whole
    finally:
        s.close()


def test_a_classic_search_refuses_an_invalid_enqueued_trial_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_study(tmp_path, name="inv", trials={"n": 2, "epochs": 0.5, "eval_every": 0.25})
    Session.open(path, classic=True).close()
    study = optuna.load_study(study_name="inv-classic", storage=Session.open(
        path, classic=True, create=False).storage_url)  # fmt: skip
    study.enqueue_trial({"batch_size": 7})
    assert main(["run", path, "--no-fork"]) == 1
    out = capsys.readouterr().out
    assert "batch_size=7 is not among its choices" in out
    s = Session.open(path, classic=True, create=False)
    try:
        states = [t.state for t in s.study.get_trials()]
        assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2
    finally:
        s.close()
