"""The conformance zoo (tests/zoo.py): every entry resumes and forks bit for bit, and every
model family forks in every registry key as a model built with the child's values.

For each entry: train K steps, checkpoint, train K more (uninterrupted); in one fresh process,
restore and train K more (resumed); fork (lr, batch_size and dropout changed) from the
uninterrupted state in memory and from the checkpoint restored in the fresh process; compare
weights, optimizer state, scheduler, RNG, data position, metrics and per-step losses bitwise.
The fork matrix (`zoo.MATRIX_CASES`) forks each family at step 0 and compares it with a run built
with the child's values.
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
from hpsearch.checkpoint import open_store
from hpsearch.search.selfcheck import first_difference
from hpsearch.training import fork

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Run every entry once: the uninterrupted runs here, the resumed ones in one child."""
    tmp = tmp_path_factory.mktemp("zoo")
    store = open_store(str(tmp / "ckpt"))
    runs: dict[str, dict] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(zoo.THREADS)
    try:
        _run_all(store, tmp, runs)
    finally:
        torch.set_num_threads(threads)
    runs["__store__"] = {"store": store}
    return runs


def _run_all(store: Any, tmp: Any, runs: dict[str, dict]) -> None:
    for name in zoo.ZOO:
        try:
            trainer = zoo.create(name)
            zoo.train(trainer, zoo.K)
            ckpt = store.save(*trainer.state()).id
            losses = zoo.train(trainer, 2 * zoo.K)
            expected = trainer.state()
            forked = zoo.create(name)
            zoo.train(forked, zoo.K)
            fork(forked, zoo.fork_changes(name))
            fork_losses = zoo.train(forked, 2 * zoo.K)
            runs[name] = {"ckpt": ckpt, "expected": expected, "losses": losses,
                          "fork_expected": forked.state(), "fork_losses": fork_losses}  # fmt: skip
        except Exception as exc:  # reported by the entry's own test
            runs[name] = {"error": f"uninterrupted run: {type(exc).__name__}: {exc}"}
    jobs = tmp / "jobs.json"
    jobs.write_text(json.dumps({n: r["ckpt"] for n, r in runs.items() if "ckpt" in r}))
    out = tmp / "out.json"
    child = [sys.executable, os.path.join(HERE, "zoo_child.py"), store.url, str(jobs), str(out)]
    proc = subprocess.run(child, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name, got in json.loads(out.read_text()).items():
        runs[name]["child"] = got


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_entry_resumes_and_forks_exactly(name: str, zoo_runs: dict[str, dict]) -> None:
    run = zoo_runs[name]
    if name == "model-compiled" and "error" in run:
        pytest.skip(f"torch.compile does not run on this machine: {run['error'][:300]}")
    assert "error" not in run, run["error"]
    got = run["child"]
    assert "error" not in got, f"in the fresh process: {got['error']}\n{got['traceback']}"
    store = zoo_runs["__store__"]["store"]
    resumed = store.load(got["resume"])
    diff = first_difference(run["expected"], (resumed.tensors, resumed.state))
    assert diff is None, f"the resumed run differs from the uninterrupted one first at {diff}"
    assert len(run["losses"]) == zoo.K and got["losses"] == run["losses"]
    assert got["tied"], "the restored model lost its tied weights"
    forked = store.load(got["fork"])
    diff = first_difference(run["fork_expected"], (forked.tensors, forked.state))
    assert diff is None, f"the fork of the restored state differs first at {diff}"
    assert got["fork_losses"] == run["fork_losses"]


@pytest.mark.parametrize(
    ("family", "keys"), zoo.MATRIX_CASES, ids=[f"{f}-{'+'.join(k)}" for f, k in zoo.MATRIX_CASES]
)
def test_a_fork_trains_as_a_model_built_with_the_childs_values(
    family: str, keys: tuple[str, ...]
) -> None:
    """A fork reaches everything that holds its keys: a dropout float of an attention or an
    RNN, as well as the Dropout modules, the optimizer's settings and the batch size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(zoo.THREADS)
    try:
        (forked, forked_losses), (built, built_losses) = zoo.forked_and_built(family, keys)
    except Exception as exc:
        if family == "compiled":
            pytest.skip(f"torch.compile does not run on this machine: {str(exc)[:300]}")
        raise
    finally:
        torch.set_num_threads(threads)
    diff = first_difference(built.state(), forked.state())
    assert diff is None, f"the fork differs from the model built with its values first at {diff}"
    assert forked_losses == built_losses
