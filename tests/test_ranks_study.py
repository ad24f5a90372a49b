"""A study of 2-rank trials (`trials.processes: 2`, gloo on the CPU), end to end: it runs; killed
(rank 0 SIGKILLed as it holds every rank's RNG for a checkpoint) and run again, it ends equal to
the uninterrupted one bit for bit; a follower rank that dies takes its trial down, and the retry
continues from the trial's newest checkpoint; the winner replays bit for bit, `check-resume`
passes, and another number of ranks for the same study is refused.

The tree forks batch sizes (32, 64, 128 over the digits' 1,437 samples: each epoch's last batch
is short, so the two ranks' shares are unequal there).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.failpoints import ONCE_ENV
from hpsearch.search.records import trial_attr
from hpsearch.search.session import Session
from hpsearch.testing.points import kill_at_point, tree_start_problems
from studyutil import SMALL_TREE, write_study

TREE: dict[str, Any] = {
    **SMALL_TREE,
    "tree": {"roots": 2, "rungs": [0.5, 1.0], "keep": 0.5, "children": 1,
             "hparams": {"weight_decay": 1e-4, "hidden": 32}},
    "trials": {"epochs": 1, "eval_every": 0.25, "processes": 2},
    "checkpoints": {"every": 0.125, "keep_best": 100},
}  # fmt: skip


def _hpsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch", *args]


def _trials(path: str) -> list[Any]:
    s = Session.open(path, create=False)
    try:
        return s.study.get_trials()
    finally:
        s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _results(path: str) -> dict[int, tuple]:
    s = Session.open(path, create=False)
    try:
        out = {}
        for t in s.study.get_trials():
            final = trial_attr(t, "final_checkpoint")
            loaded = s.store.load(final) if t.state == TrialState.COMPLETE else None
            ranks = loaded.state.get("ranks") if loaded is not None else None
            weights = loaded.tensors["model"] if loaded is not None else None
            out[t.number] = (t.state, t.params, t.value, weights, ranks)
        assert tree_start_problems(s.study.get_trials()) == []
        return out
    finally:
        s.close()


def _same(a: dict[int, tuple], b: dict[int, tuple]) -> None:
    assert sorted(a) == sorted(b)
    for n in a:
        sa, pa, va, wa, ra = a[n]
        sb, pb, vb, wb, rb = b[n]
        assert (sa, pa, va) == (sb, pb, vb), f"trial {n}"
        if wa is not None:
            assert all(torch.equal(wa[k], wb[k]) for k in wa), f"trial {n}: weights differ"
            assert ra == rb, f"trial {n}: the ranks' RNG states differ"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[int, tuple]]:
    path = write_study(tmp_path_factory.mktemp("ref"), name="r2", **TREE)
    assert main(["run", path]) == 0
    return path, _results(path)


def test_every_final_checkpoint_holds_both_ranks_once(
    reference: tuple[str, dict[int, tuple]],
) -> None:
    _, results = reference
    finals = [r for r in results.values() if r[0] == TrialState.COMPLETE]
    assert len(finals) == len(results) == 3
    for _state, _params, _value, _weights, ranks in finals:
        assert ranks["processes"] == 2 and len(ranks["rng"]) == 2
        assert ranks["rng"][0] != ranks["rng"][1]  # each rank draws its own dropout masks


def test_killed_while_checkpointing_and_run_again_ends_equal(
    tmp_path: Path, reference: tuple[str, dict[int, tuple]]
) -> None:
    path = write_study(tmp_path, name="r2", **TREE)
    # a root gathers its ranks' RNG for 4 checkpoints, and once more at its probe's end: the
    # 12th is the second checkpoint of generation 1, a child forked with values of its own
    kill_at_point(_hpsearch("run", path), "ranks.gathered", 12, log=str(tmp_path / "k.log"))
    cut = max(_trials(path), key=lambda t: t.number)
    assert cut.state == TrialState.RUNNING and trial_attr(cut, "generation") == 1
    assert main(["run", path]) == 0
    _same(_results(path), reference[1])


def test_a_dead_follower_fails_its_trial_which_continues_from_its_checkpoint(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_study(tmp_path, name="r2", **TREE)
    env = {**os.environ, "HPSEARCH_FAILPOINTS": "follower.step=9",
           ONCE_ENV: str(tmp_path / "once")}  # fmt: skip
    proc = subprocess.run(_hpsearch("run", path), env=env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = _trials(path)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    assert "rank 1 exited with code -9" in trial_attr(failed[0], "fail_reason")
    retry = next(t for t in trials if trial_attr(t, "retry_of") == failed[0].number)
    assert retry.state == TrialState.COMPLETE
    assert trial_attr(retry, "fork_step") > 0  # from the failed attempt's newest checkpoint
    # its continuation was exact: it replays bit for bit from scratch
    assert main(["replay", path, "--trial", str(retry.number)]) == 0
    assert "bitwise identical to its final checkpoint" in capfd.readouterr().out


def test_follower_ranks_a_launcher_starts_join_a_listening_worker_to_the_same_study(
    tmp_path: Path, reference: tuple[str, dict[int, tuple]]
) -> None:
    """`hpsearch rank --connect` (as srun would start it on another machine) and `hpsearch
    worker --ranks-listen`: the same study, bit for bit, as with the ranks the worker starts;
    the follower serves every trial and leaves when the worker is done."""
    path = write_study(tmp_path, name="r2", **TREE)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    follower = subprocess.Popen(_hpsearch("rank", path, "--connect", address, "--rank", "1",
                                          "--patience", "120"))  # fmt: skip
    try:
        assert main(["worker", path, "--ranks-listen", address]) == 0
        assert follower.wait(timeout=120) == 0
    finally:
        follower.kill()
    _same(_results(path), reference[1])


def test_a_follower_the_launcher_starts_again_joins_the_workers_next_team(tmp_path: Path) -> None:
    """A launcher's follower killed in the middle of a trial (once): the trial fails with the
    reason, the launcher starts the rank again (as `srun` or a loop would), it joins the
    worker's next team, the retry and the rest of the study train with it, and it leaves with
    exit status 0 when the worker is done."""
    path = write_study(tmp_path, name="r2", **TREE)
    port = _free_port()
    rank = " ".join([*_hpsearch("rank", path), "--connect", f"127.0.0.1:{port}", "--rank", "1",
                     "--patience", "60"])  # fmt: skip
    launcher = f"for i in 1 2 3; do {rank} && exit 0; echo restarted; done; exit 9"
    env = {**os.environ, "HPSEARCH_FAILPOINTS": "follower.step=9",
           ONCE_ENV: str(tmp_path / "once")}  # fmt: skip
    log = tmp_path / "launcher.log"
    with open(log, "w") as out:
        loop = subprocess.Popen(["bash", "-c", launcher], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert main(["worker", path, "--ranks-listen", f"127.0.0.1:{port}"]) == 0
        assert loop.wait(timeout=120) == 0
    finally:
        loop.kill()
    assert log.read_text().count("restarted") == 1
    trials = _trials(path)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "RankLost" in trial_attr(failed[0], "fail_reason")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_ranks_that_never_join_stop_the_run_without_spending_a_retry(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    trials = {**TREE["trials"], "rank_timeout_s": 2}
    path = write_study(tmp_path, name="r2", **{**TREE, "trials": trials})
    port = _free_port()
    assert main(["worker", path, "--ranks-listen", f"127.0.0.1:{port}"]) == 1
    err = capfd.readouterr().err
    assert "did not join within 2 s" in err and f"--connect 127.0.0.1:{port} --rank R" in err
    assert main(["run", path]) == 0  # the ranks start here this time; the trial goes on
    states = [t.state for t in _trials(path)]
    assert states == [TrialState.COMPLETE] * 3  # no FAIL, no retry


def test_the_winner_replays_and_check_resume_passes(
    reference: tuple[str, dict[int, tuple]], capfd: pytest.CaptureFixture[str]
) -> None:
    path, _ = reference
    assert main(["replay", path]) == 0
    assert main(["check-resume", path]) == 0
    out = capfd.readouterr().out
    assert "exact" in out and "NOT" not in out


def test_another_number_of_ranks_is_refused(
    reference: tuple[str, dict[int, tuple]], capfd: pytest.CaptureFixture[str]
) -> None:
    path, _ = reference
    assert main(["run", path, "--nproc-per-trial", "1"]) == 2
    assert "trials.processes" in capfd.readouterr().err


def test_processes_must_be_a_positive_count(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_study(
        tmp_path, name="r0", **{**TREE, "trials": {**TREE["trials"], "processes": 0}}
    )
    assert main(["run", path]) == 2
    assert "trials.processes" in capfd.readouterr().err
