"""Per-node bookkeeping as a study grows: a study that already holds N finished trials (100, 5,000)
gets K more real ones, and each new trial's time outside training is measured, on SQLite, the
journal storage and PostgreSQL.

    python benchmarks/bookkeeping_growth.py [--sizes 100 5000] [--new 12] [--storages ...]

The N trials are written straight into the study (Optuna's `add_trials`, and a `deleted` final
checkpoint row each in the lineage), as a study of that size leaves them: params in the search
space, 4 reports, hpsearch's attributes; their values are below what the real trials reach, so
the winner is a real one. Then `hpsearch run --no-fork` (in this process) runs K trials of the
digits MLP with TPE and MedianPruner, which read every trial, and garbage collection after
each. A trial's bookkeeping is the time from one trial's start to the next one's, less the task's
own compute (training steps and evaluations) in it: asking (with the ask lease), the trial's
reports, pruning, checkpoints, tell and GC. The median over the K trials is reported.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import optuna
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the throwaway PostgreSQL of the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from study_overhead import ComputeClock  # noqa: E402

DIGITS = os.path.join(ROOT, "examples", "digits.py") + ":DigitsMLP"
SPACE = {
    "lr": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True),
    "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
    "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128]),
}


def _study_file(workdir: str, storage: str, total: int) -> str:
    doc = {
        "name": "grow", "task": DIGITS, "seed": 0, "storage": storage,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "checkpoints": {"dir": os.path.join(workdir, "checkpoints"), "every": 0.125,
                        "keep_best": 3},
        "warmup": {"epochs": 0.25, "hparams": {"lr": 1e-2, "dropout": 0.1, "batch_size": 64,
                                               "weight_decay": 1e-4, "hidden": 64}},
        "trials": {"n": total, "epochs": 0.25, "eval_every": 0.0625},
        "search_space": {"lr": {"float": [1e-4, 3e-2], "log": True},
                         "dropout": {"float": [0.0, 0.5]},
                         "batch_size": {"categorical": [32, 64, 128]}},
        "sampler": {"name": "TPESampler", "n_startup_trials": 5},
        "pruner": {"name": "MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 1},
    }  # fmt: skip
    path = os.path.join(workdir, "grow.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def _fill(path: str, n: int, seed: int = 0) -> float:
    """N finished trials in the classic study of `path`; the seconds it took."""
    from hpsearch.search.session import Session

    t0 = time.perf_counter()
    rng = random.Random(seed)
    s = Session.open(path, classic=True)
    try:
        frozen = []
        for i in range(n):
            params = {"lr": 10 ** rng.uniform(-4, -1.6), "dropout": rng.uniform(0, 0.5),
                      "batch_size": rng.choice([32, 64, 128])}  # fmt: skip
            curve = [0.1 + 0.3 * rng.random() * (k + 1) / 4 for k in range(4)]
            pruned = rng.random() < 0.4
            attrs: dict[str, Any] = {
                "hpsearch.final_checkpoint": f"syn-{i}", "hpsearch.steps_trained": 7,
                "hpsearch.samples_trained": 360, "hpsearch.parent_checkpoint": None,
                "hpsearch.fork_step": 0, "hpsearch.fork_samples": 0,
                "hpsearch.evaluations": [{"samples": 90 * (k + 1), "val_accuracy": v}
                                         for k, v in enumerate(curve)],
            }  # fmt: skip
            state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE
            frozen.append(optuna.trial.create_trial(
                state=state,
                value=None if pruned else curve[-1], params=params, distributions=SPACE,
                intermediate_values=dict(enumerate(curve[: 2 if pruned else 4])),
                user_attrs={k: v for k, v in attrs.items() if v is not None},
            ))  # fmt: skip
        s.study.add_trials(frozen)
        for i in range(n):
            ckpt = f"syn-{i}"
            s.lineage.add_pending(ckpt, trial=i, kind="final", parent=None, step=7, samples=360,
                                  epoch=0.25)  # fmt: skip
            s.lineage.set_status(ckpt, "deleted")
    finally:
        s.close()
    return time.perf_counter() - t0


def bookkeeping(storage: str, n: int, new: int) -> dict[str, float]:
    """Median ms of bookkeeping a new trial in a study of `n` finished trials on `storage`
    ("sqlite", "journal" or a PostgreSQL URL)."""
    from hpsearch.search import runner, worker

    workdir = tempfile.mkdtemp(prefix="hpsearch-grow-")
    try:
        url = {"sqlite": f"sqlite:///{workdir}/study.db",
               "journal": f"journal:///{workdir}/study.journal"}.get(storage, storage)  # fmt: skip
        path = _study_file(workdir, url, n + new)
        fill_s = _fill(path, n)
        starts: list[tuple[float, float]] = []
        real = worker.Worker.run_trial

        with ComputeClock() as compute:

            def run_trial(w: Any, trials: Any, job: Any) -> Any:
                starts.append((time.perf_counter(), compute.seconds))
                return real(w, trials, job)

            worker.Worker.run_trial = run_trial  # type: ignore[method-assign]
            try:
                runner.run_study(path, classic=True)
            finally:
                worker.Worker.run_trial = real  # type: ignore[method-assign]
            starts.append((time.perf_counter(), compute.seconds))  # the last one's end
        outside = [(b[0] - a[0]) - (b[1] - a[1]) for a, b in itertools.pairwise(starts)]
        # the first new trial also pays for the run's start (opening, recovery): left out
        outside = outside[1:]
        return {"n": n, "new": len(outside), "fill_s": fill_s,
                "median_ms": statistics.median(outside) * 1000,
                "p90_ms": sorted(outside)[int(0.9 * (len(outside) - 1))] * 1000}  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 5000])
    p.add_argument("--new", type=int, default=12)
    p.add_argument("--storages", nargs="+", default=["sqlite", "journal", "postgresql"])
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from pgserver import start_server

    server = start_server() if "postgresql" in args.storages else None
    rows = []
    try:
        for storage in args.storages:
            for n in args.sizes:
                url = server.create_database() if storage == "postgresql" and server else storage
                r = bookkeeping(url, n, args.new)
                rows.append((storage, r))
                print(f"{storage} {n} trials: {r['median_ms']:.0f} ms a new trial outside "
                      f"training (p90 {r['p90_ms']:.0f}; filled in {r['fill_s']:.0f} s)",
                      flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    print(f"\n{os.cpu_count()} cores; {args.new} new trials on studies of {args.sizes} trials\n")
    print("| storage | finished trials before | bookkeeping a new trial, median (p90) | "
          f"x of {args.sizes[0]} |")  # fmt: skip
    print("| --- | --- | --- | --- |")
    base = {}
    for storage, r in rows:
        base.setdefault(storage, r["median_ms"])
        print(f"| {storage} | {r['n']} | {r['median_ms']:.0f} ms ({r['p90_ms']:.0f}) | "
              f"{r['median_ms'] / base[storage]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
