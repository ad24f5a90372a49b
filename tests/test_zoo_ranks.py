"""The conformance zoo under 2 ranks (`trials.processes: 2`, gloo, CPU): every entry where data
parallelism applies resumes in a fresh process and forks with another batch size, bit for bit.

tests/zoo_ranks.py says how the follower ranks build an entry from a spec string and no
arguments (the entry's name rides in the hparams), so that one Team serves many entries.
For each entry, in this process as rank 0 of a Team: train K steps, checkpoint, train K more
(the uninterrupted run); train another run K steps, fork it (lr, dropout, and batch_size 8 -> 5:
a batch of 5 is 3 + 2 samples over 2 ranks; `ranks-empty_share` forks to 47, and the epoch's
last batch of 1 leaves rank 1 no sample) and train K more. In one fresh process, rank 0 of its
own Teams: restore the checkpoint and train K more (resumed); restore it again, fork it the same
way and train K more. The resumed run must equal the uninterrupted one, and the fork of the
restored checkpoint the fork in memory, bit for bit: weights, optimizer, scheduler, data
position, metrics, rank 0's RNG and every rank's (`info["ranks"]`; `first_difference`), and the
per-step losses. And each rank's RNG streams must be its own (`_shared_streams`): a follower
that took rank 0's would be as wrong in the uninterrupted run as in the resumed one, since a
follower rebuilds its trainer from rank 0's state at every train() call.

The math check (`test_entry_trains_as_one_process`, one entry per gradient computation,
`zoo_ranks.MATH`: an optimizer or a scheduler steps the summed gradient, so the optimizer-* and
scheduler-* entries compute model-mlp's): an entry trained K steps by 2 ranks and by 1 process,
with the fork's batch size (uneven shares; an empty one in `ranks-empty_share`) and dropout 0
(each rank draws its own dropout masks, so only the math can match), must give the same
per-step losses, evaluations and buffers within `RTOL`. Weights are compared through these: an
Adam step turns a gradient that is rounding noise (an attention's key bias, which no output
depends on) into a whole step.

Where data parallelism does not apply, or applies with other math (tests/zoo_ranks.py):
- refused by design (`REFUSED`): a sparse gradient (an Embedding with sparse=True) fails with a
  TaskError at 2 ranks; the test checks that one process trains it;
- exact at the same number of ranks but not one process's math (`NOT_ONE_PROCESS`; the math
  check reports them as xfail with the reason, and fails if their math is one process's after
  all): BatchNorm without SyncBatchNorm (`model-cnn_batchnorm`, and
  `model-cnn_batchnorm-sgd-augment-workers`): each rank normalises its share with the share's
  own statistics, and rank 0's running statistics are sent to every rank before each step, as
  DDP does; `model-frozen_and_sometimes_unused` (the task picks a branch from the batch's first
  label: each rank reads its own share's); `model-non_persistent_buffers` (a buffer that counts
  the samples forward sees counts rank 0's share). They pass the resume and fork checks;
- random per rank (`RANDOM_DATA`, skipped by the math check only): augmentation draws from each
  rank's own RNG stream;
- left out as slow (`LEFT_OUT`, skips that say why; HPSEARCH_ZOO_RANKS_SLOW=1 runs them):
  `model-compiled` (every rank compiles again at each train() call, ~11 s), and two of the three
  entries with DataLoader workers (3-4 s each a side; `data-augment-workers2` runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import torch

import zoo
import zoo_ranks as zr
from hpsearch.checkpoint import open_store
from hpsearch.search.selfcheck import first_difference
from hpsearch.training.ranks import shard_bounds

HERE = os.path.dirname(os.path.abspath(__file__))
# 2 ranks against 1 process: the same math summed in another order, by the precision it runs in
RTOL = {"fp32": 1e-5, "fp16": 1e-4, "bf16": 5e-3}
LISTS = ("losses", "val_loss")  # the per-step training losses, the evaluations


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every entry's runs: here in one Team per group, the resumed ones in a fresh child."""
    tmp = tmp_path_factory.mktemp("zoo_ranks")
    store = open_store(str(tmp / "ckpt"))
    threads = torch.get_num_threads()
    zr.one_thread()
    try:
        out = zr.each_in_teams(zr.checked(), lambda team, name: _uninterrupted(store, team, name))
    finally:
        torch.set_num_threads(threads)
    jobs = tmp / "jobs.json"
    jobs.write_text(json.dumps({n: r["ckpt"] for n, r in out.items() if "ckpt" in r}))
    done = tmp / "out.json"
    child = [sys.executable, os.path.join(HERE, "zoo_ranks_child.py"), store.url]
    child += [str(jobs), str(done)]
    proc = subprocess.run(child, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name, got in json.loads(done.read_text()).items():
        out[name]["child"] = got
    return {"entries": out, "store": store}


def _uninterrupted(store: Any, team: Any, name: str) -> dict[str, Any]:
    trainer = zr.create(name)
    team.attach(trainer)
    zr.train(trainer, zoo.K)
    ckpt = store.save(*trainer.state()).id
    losses = zr.train(trainer, 2 * zoo.K)
    run = {"ckpt": ckpt, "expected": trainer.state(), "losses": losses.values}
    forked = zr.create(name)
    team.attach(forked)
    losses = zr.forked_run(forked, zr.fork_changes(name))
    run.update(fork_expected=forked.state(), fork_losses=losses.values, fork_sizes=losses.sizes)
    if name in zr.MATH and name not in zr.RANDOM_DATA:  # 2 ranks and 1 process, uneven shares
        batch_size = zr.fork_changes(name)["batch_size"]
        hp = {**zr.hparams(name), "dropout": 0.0, "batch_size": batch_size}
        ranked = zr.create(name, hp)
        team.attach(ranked)
        run["math"] = (_computed(ranked), _computed(zr.create(name, hp)))
    return run


def _computed(trainer: Any) -> dict[str, Any]:
    """What a run of K steps computed: its losses, its evaluations, its model's buffers."""
    losses = zr.train(trainer, zoo.K).values
    buffers = {n: b.detach().clone() for n, b in trainer.model.named_buffers()}
    return {
        "losses": losses,
        "val_loss": [h["val_loss"] for h in trainer.history],
        "buffers": buffers,
    }


def _entry(runs: dict[str, Any], name: str) -> dict[str, Any]:
    if name in zr.LEFT_OUT and not zr.SLOW:
        pytest.skip(zr.LEFT_OUT[name])
    run = runs["entries"][name]
    assert "error" not in run, f"{run['error']}\n{run['traceback']}"
    return run


def _difference(expected: tuple[dict, dict], store: Any, ckpt: str) -> str | None:
    """Where the saved state `ckpt` first differs from `expected`, every rank's RNG included."""
    loaded = store.load(ckpt)
    diff = first_difference(expected, (loaded.tensors, loaded.state))
    if diff is not None:
        return diff
    mine, theirs = expected[1].get("ranks"), loaded.state.get("ranks")
    assert mine is not None and mine["processes"] == zr.WORLD, "the state lacks the ranks' RNGs"
    for rank, (a, b) in enumerate(zip(mine["rng"], theirs["rng"], strict=True)):
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            return f"ranks.rng[{rank}]"
    return None


def _shared_streams(state: tuple[dict, dict]) -> list[str]:
    """The RNGs that two ranks hold in the same state: each rank must draw from its own stream
    (a follower that took rank 0's RNG would train every later call as the resumed run does,
    so no comparison of the two could see it)."""
    rngs = state[1]["ranks"]["rng"]
    distinct = {k: len({json.dumps(r[k]) for r in rngs}) for k in ("python", "numpy", "torch")}
    return [k for k, n in distinct.items() if n < len(rngs)]


CHECKED = [n for n in zr.ENTRIES if n not in zr.REFUSED]


@pytest.mark.parametrize("name", CHECKED)
def test_entry_resumes_and_forks_exactly_at_2_ranks(name: str, runs: dict[str, Any]) -> None:
    run = _entry(runs, name)
    got = run["child"]
    assert "error" not in got, f"in the fresh process: {got['error']}\n{got['traceback']}"
    for state in (run["expected"], run["fork_expected"]):
        assert not _shared_streams(state), f"the ranks share the RNGs {_shared_streams(state)}"
    diff = _difference(run["expected"], runs["store"], got["resume"])
    assert diff is None, f"the resumed run differs from the uninterrupted one first at {diff}"
    assert len(run["losses"]) == zoo.K and got["losses"] == run["losses"]
    diff = _difference(run["fork_expected"], runs["store"], got["fork"])
    assert diff is None, f"the fork of the restored state differs from the one in memory at {diff}"
    assert got["fork_losses"] == run["fork_losses"] and got["fork_sizes"] == run["fork_sizes"]


@pytest.mark.parametrize("name", zr.MATH)
def test_entry_trains_as_one_process(name: str, runs: dict[str, Any]) -> None:
    if name in zr.RANDOM_DATA:
        pytest.skip("its augmentation draws from each rank's own RNG stream: another random draw")
    ranked, alone = _entry(runs, name)["math"]
    rtol = RTOL[zr.precision(name)]
    pairs = {what: (torch.tensor(ranked[what]), torch.tensor(alone[what])) for what in LISTS}
    pairs.update((f"buffer {b}", (ranked["buffers"][b], x)) for b, x in alone["buffers"].items())
    far = [what for what, (a, b) in pairs.items() if not torch.allclose(a, b, rtol, rtol)]
    if name in zr.NOT_ONE_PROCESS:
        assert far, f"2 ranks train {name} as one process: take it out of NOT_ONE_PROCESS"
        pytest.xfail(f"not one process's math at 2 ranks ({', '.join(far)}): "
                     f"{zr.NOT_ONE_PROCESS[name]}")  # fmt: skip
    assert not far, f"2 ranks and 1 process differ beyond rtol {rtol}: {', '.join(far)}"


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("name", list(zr.REFUSED))
def test_entry_is_refused_at_2_ranks(name: str, runs: dict[str, Any]) -> None:
    kind, words, why = zr.REFUSED[name]
    zr.train(zr.create(name), 2)  # one process trains it: the refusal is the ranks'
    error = runs["entries"][name].get("error", "")
    assert error.startswith(kind) and words in error, f"{why}; got {error or 'no error'}"


def test_first_difference_reads_every_ranks_rng() -> None:
    """`hpsearch check-resume` of a trial of several ranks compares the followers' RNGs too."""
    tensors, info = zr.create("model-mlp").state()
    info["ranks"] = {"processes": 2, "rng": [info["rng"], info["rng"]]}
    other = json.loads(json.dumps(info))
    other["ranks"]["rng"][1]["numpy"][2] += 1  # rank 1's NumPy position
    assert first_difference((tensors, info), (tensors, other)) == "ranks"


def test_the_forks_split_batches_unevenly(runs: dict[str, Any]) -> None:
    """The checks above cover uneven shares: a fork's batch of 5 is 3 + 2 samples, and the
    empty-share entry's batch of 1 leaves rank 1 none."""
    assert shard_bounds(5, 0, 2) == (0, 3) and shard_bounds(5, 1, 2) == (3, 5)
    entries = runs["entries"]
    fives = [n for n in CHECKED if n in entries and zr.fork_changes(n)["batch_size"] == 5]
    assert len(fives) > 40 and all(5 in entries[n]["fork_sizes"] for n in fives)
    assert 1 in entries["ranks-empty_share"]["fork_sizes"] and shard_bounds(1, 1, 2) == (1, 1)
