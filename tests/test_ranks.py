"""Trials of several ranks at the training layer (hpsearch.training.ranks and .team): the shares
of a batch, a stop that checkpoints every rank once and resumes bit for bit, a refused change
in the number of ranks, and a dead rank that ends the others' collectives instead of hanging."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hpsearch.errors import CheckpointMismatch, RankLost
from hpsearch.search.selfcheck import first_difference
from hpsearch.training import Budget, Every, Hooks, Trainer
from hpsearch.training.ranks import check_processes, shard_bounds
from hpsearch.training.team import Team
from studyutil import DIGITS
from studyutil import deadline as within

HP = {"lr": 1e-2, "batch_size": 50, "dropout": 0.2, "weight_decay": 1e-4, "hidden": 32}


class Stop(Exception):
    pass


class Record(Hooks):
    """Keeps each checkpoint's state; raises Stop after step `stop_at` (a SIGTERM's stop)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.saved = stop_at, []

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        if trainer.progress.step == self.stop_at:
            raise Stop

    def on_checkpoint(self, trainer: Trainer) -> None:
        self.saved.append(_copy(trainer.state()))


def _copy(state: tuple[dict, dict]) -> tuple[dict, dict]:
    tensors, info = state
    return {g: {k: v.clone() for k, v in d.items()} for g, d in tensors.items()}, info


@pytest.fixture(scope="module")
def digits() -> Any:
    from hpsearch.config.taskload import load_task

    task = load_task(DIGITS)()
    return task, task.datasets()


@pytest.fixture(scope="module")
def team(digits: Any) -> Any:
    _, (train, val) = digits
    with Team(2, task=DIGITS, study_path=None, device="cpu", timeout_s=120,
              sizes=(len(train), len(val))) as t:  # fmt: skip
        yield t


def _trainer(digits: Any) -> Trainer:
    task, datasets = digits
    return Trainer.create(task, HP, seed=5, datasets=datasets)


def test_a_batch_is_shared_contiguously_and_a_short_one_unevenly() -> None:
    assert [shard_bounds(50, r, 2) for r in range(2)] == [(0, 25), (25, 50)]
    assert [shard_bounds(37, r, 2) for r in range(2)] == [(0, 19), (19, 37)]  # 1,437 % 50
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]  # a rank with none
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_followers_that_see_other_data_are_refused(digits: Any) -> None:
    """Before the module's team starts (one team at a time per process)."""
    from hpsearch.errors import RankSetupError

    team = Team(2, task=DIGITS, study_path=None, device="cpu", timeout_s=120, sizes=(7, 3))
    with pytest.raises(RankSetupError, match="every rank must load the same data"), team:
        pass


def test_a_stop_checkpoints_every_rank_once_and_resumes_bit_for_bit(
    digits: Any, team: Team
) -> None:
    """Across an epoch's end (29 steps of 50 samples, the last one 37), so that a short batch
    is shared unevenly before and after the stop."""
    budget, every = Budget(steps=40), Every(steps=10)
    with within(120):
        straight = _trainer(digits)
        team.attach(straight)
        straight.train(budget, hooks=Record(), eval_every=every, checkpoint_every=every)
        expected = _copy(straight.state())

        stopped = _trainer(digits)
        team.attach(stopped)
        hooks = Record(stop_at=25)
        with pytest.raises(Stop):
            stopped.train(budget, hooks=hooks, eval_every=every, checkpoint_every=every)
        assert stopped.gang is not None and stopped.gang.idle  # the follower waits: no hang
        stopped.checkpoint(hooks)  # what a stop does after the loop: no collective there
        tensors, info = hooks.saved[-1]
        assert info["progress"]["step"] == 25 and len(info["ranks"]["rng"]) == 2

        resumed = Trainer.restore(digits[0], tensors, info, datasets=digits[1])
        team.attach(resumed)
        resumed.train(budget, hooks=Record(), eval_every=every, checkpoint_every=every)
    assert first_difference(expected, resumed.state()) is None
    assert expected[1]["ranks"]["rng"][0] != expected[1]["ranks"]["rng"][1]


def test_a_state_of_two_ranks_is_not_continued_by_another_number(digits: Any, team: Team) -> None:
    trainer = _trainer(digits)
    team.attach(trainer)
    with within(60):
        trainer.train(Budget(steps=3))
    tensors, info = _copy(trainer.state())
    alone = Trainer.restore(digits[0], tensors, info, datasets=digits[1])
    with pytest.raises(CheckpointMismatch, match="trained by 2 process"):
        alone.train(Budget(steps=6))
    with pytest.raises(CheckpointMismatch, match=r"trials\.processes: 2"):
        check_processes(alone, 3)
    one = Trainer.restore(digits[0], *_copy(_trainer(digits).state()), datasets=digits[1])
    with pytest.raises(CheckpointMismatch, match="trained by 1 process"):
        check_processes(one, 2)
    trained_alone = _trainer(digits)  # in memory, never saved: not a fresh run either
    trained_alone.train(Budget(steps=2))
    team.attach(trained_alone)
    with pytest.raises(CheckpointMismatch, match="trained by 1 process"):
        trained_alone.train(Budget(steps=4))
    team.release(trained_alone)
    assert team.healthy  # refused before anything was sent


def test_a_dead_follower_ends_rank_zeros_collectives_with_a_reason(digits: Any, team: Team) -> None:
    """Last: it kills the module's team (one team at a time per process, as in a worker)."""

    class KillFollower(Hooks):
        def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
            if trainer.progress.step == 3:
                team.procs[0].kill()
                team.procs[0].wait()

    start = time.monotonic()
    with within(120):
        trainer = _trainer(digits)
        team.attach(trainer)
        with pytest.raises(RankLost, match="rank 1 exited with code -9"):
            trainer.train(Budget(steps=50), hooks=KillFollower())
    # far below the 120 s collective timeout: a closed connection is seen at once
    assert time.monotonic() - start < 60
