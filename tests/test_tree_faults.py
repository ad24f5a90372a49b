"""The fork tree under kills at every point of a node's start: a taken-over, retried or cut-off
child forks from its parent's final checkpoint, never from scratch in its parent's name, and the
killed study ends as the uninterrupted one (one worker, SQLite); with four workers each killed at
another point (PostgreSQL, and the journal storage), every node still starts at its parent and the
winner replays.

`benchmarks/fault_campaign.py --points` runs every point on both databases with 1 and 4 workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.failpoints import NODE_START
from hpsearch.search.records import trial_attr
from hpsearch.search.replay import replay, winner
from hpsearch.search.session import Session
from hpsearch.testing.points import kill_at_point, tree_start_problems
from studyutil import SMALL_TREE, write_study

TREE = {**SMALL_TREE, "checkpoints": {"every": 0.125, "keep_best": 100}}


def _hpsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch", *args]


def _results(path: str, storage: str | None = None) -> dict[int, tuple]:
    s = Session.open(path, storage=storage, create=False)
    try:
        out = {}
        for t in s.study.get_trials():
            final = trial_attr(t, "final_checkpoint")
            weights = (
                s.store.load(final).tensors["model"] if t.state == TrialState.COMPLETE else None
            )
            slot = tuple(trial_attr(t, k) for k in ("generation", "parent_trial", "child"))
            out[t.number] = (t.state, t.params, t.value, slot, weights)
        assert tree_start_problems(s.study.get_trials()) == []
        return out
    finally:
        s.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple]:
    path = write_study(tmp_path_factory.mktemp("ref"), name="tf", **TREE)
    assert main(["run", path]) == 0
    return _results(path)


@pytest.mark.parametrize(
    "point, promotion",
    [*((p, "async") for p in NODE_START), ("node.asked", "sync")],
)
def test_a_node_killed_at_any_point_of_its_start_forks_from_its_parent(
    tmp_path: Path,
    reference: dict[int, tuple],
    point: str,
    promotion: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The reference is the asynchronous tree (the default) run straight; one worker grows the
    synchronous tree node for node the same, so a killed synchronous study ends equal to it."""
    tree = {**TREE, "tree": {**TREE["tree"], "promotion": promotion}}  # type: ignore[dict-item]
    path = write_study(tmp_path, name="tf", **tree)
    # the 6th pass is the second node of generation 1: a child with values of its own
    kill_at_point(_hpsearch("run", path), point, 6, log=str(tmp_path / "killed.log"))
    s = Session.open(path, create=False)
    cut = max(s.study.get_trials(), key=lambda t: t.number)  # the node the kill cut off
    s.close()
    assert trial_attr(cut, "generation") == 1 and cut.state != TrialState.COMPLETE
    capsys.readouterr()
    assert main(["run", path]) == 0  # in this process, as the reference ran
    assert "from step 0" not in capsys.readouterr().out  # no child started over as its parent
    got = _results(path)
    assert sorted(got) == sorted(reference)
    for n, (state, params, value, slot, weights) in reference.items():
        assert got[n][:4] == (state, params, value, slot), f"trial {n} differs"
        if weights is not None:
            assert all(torch.equal(weights[k], got[n][4][k]) for k in weights), f"trial {n}"


@pytest.mark.parametrize("database", ["postgres", "journal"])
def test_four_workers_each_killed_at_another_point(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    """On PostgreSQL, and on the journal storage (four processes appending to one journal file
    and writing the SQLite lineage beside it, each killed at another point)."""
    if database == "postgres":
        postgres_db = request.getfixturevalue("postgres_db")
    else:
        postgres_db = f"journal:///{tmp_path}/runs/study.journal"
    path = write_study(tmp_path, name="tf", **TREE)
    Session.open(path, storage=postgres_db).close()  # the study, before the workers open it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [
        subprocess.Popen(
            _hpsearch("worker", path, "--storage", postgres_db),
            env={**env, "HPSEARCH_FAILPOINTS": f"{point}=2"},  # its second node: generation 1
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for point in NODE_START
    ]
    codes = [w.wait(timeout=300) for w in workers]
    assert codes.count(-9) >= 2, codes  # a worker may find nothing left to start
    done = subprocess.run(_hpsearch("run", path, "--workers", "4", "--storage", postgres_db),
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    got = _results(path, postgres_db)
    slots = [slot for state, _, _, slot, _ in got.values()]
    assert len(got) == len(set(slots)) == 12
    assert all(state in (TrialState.COMPLETE, TrialState.PRUNED) for state, *_ in got.values())
    s = Session.open(path, storage=postgres_db, create=False)
    try:
        won = winner(s)
        assert won is not None
        _, result = replay(s, won.number, say=lambda _: None)
        assert result.exact and result.compared > 0
    finally:
        s.close()
