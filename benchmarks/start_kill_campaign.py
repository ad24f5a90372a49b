"""Kills at every point of a fork-tree node's start, on each storage, with 1 and 4 workers.

    python benchmarks/start_kill_campaign.py [--storages sqlite postgresql journal]
                                             [--workers 1 4] [--n 6] [--keep DIR]
                                             [--processes 2]

A node's start passes four points no outside watcher can catch in time (`hpsearch.failpoints`):
its trial enqueued with its place, asked, sampled, its attempt registered and its fork restored.
For every point, a 12-node tree study (4 roots, 2 survivors a generation forked twice) is run
until it kills itself there, then run again to the end:

- one worker: killed at the point's n-th pass (n=6: the second node of generation 1, a child with
  values of its own); the study must end as the uninterrupted one (the same trials, params,
  values and places, bitwise equal final weights);
- four workers (`hpsearch worker` processes started together, as on four machines), each killed
  at the point's second pass (its second node: generation 1), then `hpsearch run --workers 4` to
  the end: every slot filled once, every trial finished, and every node started at its parent's
  final checkpoint (`hpsearch.testing.points.tree_start_problems`); the winner replays exactly.

With `--processes N`, every trial trains on N ranks (`trials.processes`), and the points include
`ranks.gathered` (rank 0 holds every rank's RNG for a checkpoint, nothing of it written yet).

PostgreSQL runs on a throwaway server (tests/pgserver.py). Prints a table and exits 1 if any run
broke the rule. tests/test_tree_faults.py runs a slice of this in CI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hpsearch.failpoints import NODE_START  # noqa: E402
from hpsearch.search.records import trial_attr  # noqa: E402
from hpsearch.search.replay import replay, winner  # noqa: E402
from hpsearch.search.session import Session  # noqa: E402
from hpsearch.testing.points import kill_at_point, tree_start_problems  # noqa: E402
from studyutil import SMALL_TREE, write_study  # noqa: E402

HP = [sys.executable, "-m", "hpsearch"]
PROCESSES = 1  # ranks per trial (--processes)


def _study(work: str, storage: str | None) -> str:
    over: dict[str, Any] = {**SMALL_TREE, "checkpoints": {"every": 0.125, "keep_best": 100}}
    if PROCESSES > 1:
        over["trials"] = {**over["trials"], "processes": PROCESSES}
    if storage:
        over["storage"] = storage
    return write_study(work, name="skc", **over)


def _results(path: str) -> dict[int, tuple]:
    s = Session.open(path, create=False)
    try:
        out = {}
        for t in s.study.get_trials():
            slot = tuple(trial_attr(t, k) for k in ("generation", "parent_trial", "child"))
            weights = None
            if t.state.name == "COMPLETE":
                weights = s.store.load(trial_attr(t, "final_checkpoint")).tensors["model"]
            out[t.number] = (t.state.name, t.params, t.value, slot, weights)
        return out
    finally:
        s.close()


def _problems(path: str, reference: dict[int, tuple] | None) -> list[str]:
    s = Session.open(path, create=False)
    try:
        trials = s.study.get_trials()
        out = tree_start_problems(trials)
        slots = [tuple(trial_attr(t, k) for k in ("generation", "parent_trial", "child"))
                 for t in trials]  # fmt: skip
        if len(slots) != len(set(slots)) or len(slots) != 12:
            out.append(f"{len(slots)} trials, {len(set(slots))} slots (12 of each expected)")
        out += [f"trial {t.number} is {t.state.name}" for t in trials
                if t.state.name not in ("COMPLETE", "PRUNED")]  # fmt: skip
        won = winner(s)
        if won is not None and not replay(s, won.number, say=lambda _: None)[1].exact:
            out.append(f"the winner, trial {won.number}, does not replay exactly")
    finally:
        s.close()
    if reference is not None:
        got = _results(path)
        for n, (state, params, value, slot, weights) in reference.items():
            if n not in got or got[n][:4] != (state, params, value, slot):
                out.append(f"trial {n} differs from the uninterrupted study")
            elif weights is not None and not all(torch.equal(weights[k], got[n][4][k])
                                                 for k in weights):  # fmt: skip
                out.append(f"trial {n}'s final weights differ")
    return out


def _url(storage: str, work: str, server: Any) -> str | None:
    """A fresh study's storage in `work` (None: the study file's own sqlite beside it)."""
    os.makedirs(work, exist_ok=True)
    if storage == "postgresql":
        return str(server.create_database())
    if storage == "journal":
        return f"journal:///{work}/study.journal"
    return None


def one_worker(work: str, storage: str | None, point: str, n: int, ref: dict) -> list[str]:
    path = _study(work, storage)
    kill_at_point([*HP, "run", path], point, n, log=os.path.join(work, "killed.log"))
    done = subprocess.run([*HP, "run", path], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return [f"the rerun exited {done.returncode}: {done.stderr[-300:]}"]
    return _problems(path, ref)


def four_workers(work: str, storage: str | None, point: str) -> list[str]:
    path = _study(work, storage)
    Session.open(path).close()  # the study, before the workers open it
    env = {**os.environ, "HPSEARCH_FAILPOINTS": f"{point}=2"}
    procs = [subprocess.Popen([*HP, "worker", path], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(4)]  # fmt: skip
    killed = sum(p.wait(timeout=900) == -9 for p in procs)
    done = subprocess.run([*HP, "run", path, "--workers", "4"], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    if done.returncode != 0:
        return [f"the rerun exited {done.returncode}: {done.stderr[-300:]}"]
    out = _problems(path, None)
    return out if killed else [*out, "no worker passed the point twice"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storages", nargs="+", default=["sqlite", "postgresql", "journal"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 4])
    p.add_argument("--n", type=int, default=6, help="the pass a single worker is killed at")
    p.add_argument("--keep", help="work here and keep it (default: a temporary directory)")
    p.add_argument("--processes", type=int, default=1, help="ranks per trial")
    args = p.parse_args()
    global PROCESSES
    PROCESSES = args.processes
    points = NODE_START if PROCESSES == 1 else (*NODE_START, "ranks.gathered")
    root = args.keep or tempfile.mkdtemp(prefix="hpsearch-start-kills-")
    server = None
    rows, bad = [], 0
    try:
        for storage in args.storages:
            if storage == "postgresql":
                from pgserver import start_server

                server = server or start_server()
            for workers in args.workers:
                ref = None
                for point in points:
                    work = os.path.join(root, f"{storage}-{workers}-{point}")
                    began = time.monotonic()
                    if workers == 1:
                        if ref is None:
                            ref_work = os.path.join(root, f"{storage}-reference")
                            ref_path = _study(ref_work, _url(storage, ref_work, server))
                            subprocess.run([*HP, "run", ref_path], check=True,
                                           capture_output=True)  # fmt: skip
                            ref = _results(ref_path)
                        problems = one_worker(work, _url(storage, work, server), point, args.n,
                                              ref)  # fmt: skip
                    else:
                        problems = four_workers(work, _url(storage, work, server), point)
                    bad += bool(problems)
                    rows.append((storage, workers, point, time.monotonic() - began, problems))
                    print(f"{storage:<10} {workers} worker(s) {point:<15} "
                          f"{time.monotonic() - began:6.1f} s  "
                          f"{'ok' if not problems else '; '.join(problems)[:300]}",
                          flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    print(f"\n{len(rows)} campaigns, {bad} broke a rule; work in {root}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
