"""Worker utilisation of the fork tree, asynchronous against synchronous (issue 24, item 1).

A GPU stand-in task: every training step sleeps `--step-ms` (the GPU's share of a step) around a
tiny real model, so the CPU is not what limits the workers; each step also appends one byte to
a counter file, so the time in training steps is counted exactly across processes. For each
number of workers the same study file (the default tree shape sized from `--runs-each` full runs
per worker) runs once with `tree.promotion: async` and once with `sync`, each as
`hpsearch run --workers W` on a fresh SQLite database, and reports

- utilisation: time in training steps / (workers x the trials' phase), the phase being first
  node start to last node end (Optuna's own timestamps: start-up and the study's creation are
  left out), and the same over the command's whole wall time;
- nodes per minute over the phase;
- outside training per node: the workers' time in the phase not spent in a training step
  (asking, sampling, restoring, checkpoints, evaluation, waiting), per node.

    python benchmarks/async_tree.py --workers 1 4 8 16 [--runs-each 8] [--step-ms 50]
        [--full-steps 64] [--promotion async sync before --before /tmp/old/src]
        [--storage sqlite|journal]

Each worker is a process that imports torch (about 250 MB of memory): the machine's memory and
cores bound how many fit; say which did not with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from hpsearch.task import Task

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS_ENV = "HPSEARCH_BENCH_STEPS"  # the counter file: one byte a training step
STEP_ENV = "HPSEARCH_BENCH_STEP_S"
TRAIN = 512  # samples an epoch


class SleepTask(Task):
    """y = x @ w + noise; a linear model trained with SGD; every step sleeps as a GPU would
    compute, and counts itself."""

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(TRAIN + 128, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g) + 0.3 * torch.randn(TRAIN + 128, 1, generator=g)
        return TensorDataset(x[:TRAIN], y[:TRAIN]), TensorDataset(x[TRAIN:], y[TRAIN:])

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return nn.Sequential(nn.Dropout(float(hparams["dropout"])), nn.Linear(8, 1))

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=float(hparams["lr"]), momentum=0.9)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        time.sleep(float(os.environ.get(STEP_ENV, "0.05")))  # the GPU's share of the step
        path = os.environ.get(STEPS_ENV)
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
        return nn.functional.mse_loss(model(x), y)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in loader:
                total += float(nn.functional.mse_loss(model(x), y, reduction="sum"))
                n += len(y)
        return {"val_loss": total / n}


def storage_url(workdir: str, storage: str) -> str:
    return {"sqlite": f"sqlite:///{workdir}/study.db",
            "journal": f"journal:///{workdir}/study.journal"}[storage]  # fmt: skip


def optuna_storage(workdir: str, storage: str) -> Any:
    """The study's storage as Optuna opens it, to read the trials back."""
    import optuna

    if storage == "journal":
        backend = optuna.storages.journal.JournalFileBackend(f"{workdir}/study.journal")
        return optuna.storages.JournalStorage(backend)
    return storage_url(workdir, storage)


def study_file(
    workdir: str, *, budget: float, promotion: str, full_steps: int, storage: str = "sqlite"
) -> str:
    import yaml

    doc = {
        "name": "stand-in",
        "task": f"{os.path.abspath(__file__)}:SleepTask",
        "seed": 0,
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "storage": storage_url(workdir, storage),
        "checkpoints": {
            "dir": os.path.join(workdir, "checkpoints"),
            "every": 0.5,  # the stand-in's CPU is hpsearch's own: fewer saves, less of it
            "keep_best": 1,
        },
        "trials": {"epochs": full_steps * 32 / TRAIN, "eval_every": 0.25, "budget": budget},
        "tree": {"promotion": promotion, "hparams": {"dropout": 0.0}},  # "before": no key
        "schedule": {"name": "wsd", "decay": 0.2},
        "search_space": {
            "lr": {"float": [1e-3, 0.3], "log": True},
            "batch_size": {"categorical": [32, 64]},  # nodes of uneven length, as in real life
        },
        "pruner": None,
    }
    if promotion == "before":  # an hpsearch from before the key: its synchronous tree
        del doc["tree"]["promotion"]  # type: ignore[attr-defined]
    path = os.path.join(workdir, "study.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def run(workers: int, promotion: str, args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    workdir = tempfile.mkdtemp(prefix="hpsearch-async-")
    try:
        path = study_file(workdir, budget=args.runs_each * workers, promotion=promotion,
                          full_steps=args.full_steps, storage=args.storage)  # fmt: skip
        steps = os.path.join(workdir, "steps")
        env = {**os.environ, "OMP_NUM_THREADS": "1", STEPS_ENV: steps,
               STEP_ENV: str(args.step_ms / 1000)}  # fmt: skip
        if promotion == "before":
            env["PYTHONPATH"] = os.pathsep.join([args.before, env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "hpsearch", "run", path, "--workers", str(workers)]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - t0
        load = max(load, os.getloadavg()[0])
        trials = optuna.load_study(
            study_name="stand-in", storage=optuna_storage(workdir, args.storage)
        ).get_trials(deepcopy=False)
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
        ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
        phase = max(ends) - min(starts)
        busy = os.path.getsize(steps) * args.step_ms / 1000
        gens = [t.user_attrs.get("hpsearch.generation") for t in trials]
        return {
            "workers": workers, "promotion": promotion, "nodes": len(trials),
            "generations": [gens.count(g) for g in sorted(set(gens), key=str)],
            "phase_s": phase, "wall_s": wall, "busy_s": busy,
            "util": busy / (workers * phase), "util_wall": busy / (workers * wall),
            "nodes_per_min": len(trials) / phase * 60,
            "outside_ms": (workers * phase - busy) / len(trials) * 1000,
            "best": min(t.value for t in trials if t.value is not None),
            "load": load,
        }  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument(
        "--promotion",
        nargs="+",
        default=["async", "sync"],
        help="async, sync, and `before`: the synchronous tree of the hpsearch whose "
        "src/ --before names (e.g. `git archive cdce19f src | tar -x -C /tmp/old`)",
    )
    p.add_argument("--storage", choices=["sqlite", "journal"], default="sqlite")
    p.add_argument("--before", default="", help="src/ of an earlier hpsearch, for `before`")
    p.add_argument("--runs-each", type=float, default=8.0, help="budget per worker, full runs")
    p.add_argument("--step-ms", type=float, default=50.0, help="the stand-in's step time")
    p.add_argument("--full-steps", type=int, default=64, help="steps of a full run at batch 32")
    args = p.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for w in args.workers:
        for promotion in args.promotion:
            r = run(w, promotion, args)
            rows.append(r)
            print(f"{promotion} {w} workers: utilisation {r['util']:.2f} ({r['util_wall']:.2f} "
                  f"of the run), {r['nodes_per_min']:.0f} nodes/min, {r['outside_ms']:.0f} ms "
                  f"outside training a node, {r['nodes']} nodes {r['generations']}, phase "
                  f"{r['phase_s']:.0f} s, run {r['wall_s']:.0f} s, load {r['load']:.1f}",
                  flush=True)  # fmt: skip
    print(
        f"\n{platform.node()}: {os.cpu_count()} cores; {args.storage}; step {args.step_ms:g} ms; "
        f"a full run {args.full_steps} steps at batch 32; "
        f"budget {args.runs_each:g} full runs a worker\n"
    )
    print("| workers | tree | nodes | utilisation (phase) | (whole run) | nodes/min | "
          "outside training a node | phase s | run s | load |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['workers']} | {r['promotion']} | {r['nodes']} | {r['util']:.2f} | "
              f"{r['util_wall']:.2f} | {r['nodes_per_min']:.0f} | {r['outside_ms']:.0f} ms | "
              f"{r['phase_s']:.0f} | {r['wall_s']:.0f} | {r['load']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
