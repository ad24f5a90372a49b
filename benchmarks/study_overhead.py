"""How much of a trial's wall time is hpsearch's own bookkeeping, and does disk use stay bounded?

    python benchmarks/study_overhead.py [--study studies/quickstart.yaml] [--trials 10 100]

1. Overhead: runs the study (in a temporary directory, the study file's own settings) and times
   the task's compute -- every training step and every evaluation -- inside each trial. The rest
   of the trial's wall time is hpsearch's: Optuna calls (ask, report, pruning, tell, attributes),
   the checkpoint tree, checkpoint snapshots and commits, heartbeats, garbage collection.
   Target: <= 10 % of a trial's wall time.
2. Disk: the high-water mark of the checkpoint directory, sampled every 20 ms, for a study of the
   first trial count vs the last. Target: <= 1.1x.

Prints a table and the lines to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time

import optuna
import yaml

from hpsearch.search import runner, worker
from hpsearch.search.scheduler.fork_from_base import ForkFromBase
from hpsearch.search.scheduler.tree import Tree
from hpsearch.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ComputeClock:
    """Wraps Trainer.step and Trainer.evaluate to add up the task's own compute time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._step = loop.Trainer.step
        self._eval = loop.Trainer.evaluate

    def __enter__(self) -> ComputeClock:
        clock = self

        def step(trainer, hooks):
            t = time.perf_counter()
            try:
                return clock._step(trainer, hooks)
            finally:
                clock.seconds += time.perf_counter() - t

        def evaluate(trainer):
            t = time.perf_counter()
            try:
                return clock._eval(trainer)
            finally:
                clock.seconds += time.perf_counter() - t

        loop.Trainer.step = step  # type: ignore[method-assign]
        loop.Trainer.evaluate = evaluate  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        loop.Trainer.step = self._step  # type: ignore[method-assign]
        loop.Trainer.evaluate = self._eval  # type: ignore[method-assign]


class OptunaClock:
    """Adds up the time spent inside Optuna's own calls (ask with sampling, suggest, report,
    pruning, tell, attributes): the part of the overhead any Optuna search pays."""

    TARGETS = (
        (optuna.study.Study, "ask"),
        (optuna.study.Study, "tell"),
        (optuna.trial.Trial, "_suggest"),
        (optuna.trial.Trial, "should_prune"),
        (optuna.trial.Trial, "set_user_attr"),
        (optuna.storages._CachedStorage, "set_trial_intermediate_value"),
        (optuna.storages._CachedStorage, "get_all_trials"),
        (optuna.storages._CachedStorage, "get_trial"),
    )

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._saved: list[tuple[type, str, object]] = []

    def __enter__(self) -> OptunaClock:
        for cls, name in self.TARGETS:
            orig = getattr(cls, name)
            self._saved.append((cls, name, orig))
            setattr(cls, name, self._wrap(orig))
        return self

    def _wrap(self, fn):
        clock = self

        def timed(*args, **kwargs):
            if clock._depth:  # nested Optuna calls are counted once, by the outer one
                return fn(*args, **kwargs)
            clock._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - t
                clock._depth -= 1

        return timed

    def __exit__(self, *exc: object) -> None:
        for cls, name, orig in self._saved:
            setattr(cls, name, orig)


class DiskSampler(threading.Thread):
    """Samples the size of a directory tree every `every` seconds; keeps the maximum."""

    def __init__(self, path: str, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.path, self.every, self.peak, self.stop = path, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _tree_bytes(self.path))
            time.sleep(self.every)


def _tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # deleted while we looked
                total += os.path.getsize(os.path.join(dirpath, f))
    return total


def _copy_study(src: str, workdir: str) -> str:
    """The study file with its task path made absolute, in a fresh directory."""
    with open(src) as f:
        doc = yaml.safe_load(f)
    task_path, _, cls = doc["task"].rpartition(":")
    if task_path.endswith(".py"):
        doc["task"] = os.path.join(os.path.dirname(os.path.abspath(src)), task_path) + ":" + cls
    path = os.path.join(workdir, os.path.basename(src))
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


class TrialsClock:
    """Marks when the warm-up ends: from there to the study's end, every trial's ask, fork,
    training, reports, checkpoints, tell and GC happen, one trial after the other."""

    def __init__(self, compute: ComputeClock, optuna_clock: OptunaClock) -> None:
        self.compute, self.optuna_clock = compute, optuna_clock
        self.start = self.compute_at_start = self.optuna_at_start = 0.0
        self.states: list[str] = []
        self._prepare = ForkFromBase.prepare
        self._prepare_tree = Tree.prepare  # a fork tree has no warm-up: its trials start at once
        self._run_trial = worker.Worker.run_trial

    def __enter__(self) -> TrialsClock:
        clock = self

        def prepare(scheduler):
            (clock._prepare_tree if isinstance(scheduler, Tree) else clock._prepare)(scheduler)
            clock.start = time.perf_counter()
            clock.compute_at_start = clock.compute.seconds
            clock.optuna_at_start = clock.optuna_clock.seconds

        def run_trial(w, trials, job):
            out = clock._run_trial(w, trials, job)
            clock.states.append(out.state)
            return out

        ForkFromBase.prepare = prepare  # type: ignore[method-assign]
        Tree.prepare = prepare  # type: ignore[method-assign]
        worker.Worker.run_trial = run_trial  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        ForkFromBase.prepare = self._prepare  # type: ignore[method-assign]
        Tree.prepare = self._prepare_tree  # type: ignore[method-assign]
        worker.Worker.run_trial = self._run_trial  # type: ignore[method-assign]


def run(study: str, trials: int, storage: str | None = None) -> dict[str, float]:
    workdir = tempfile.mkdtemp(prefix="hpsearch-overhead-")
    try:
        path = _copy_study(study, workdir)
        from hpsearch.config import load_study_file

        settings = load_study_file(path)
        ckpt_dir = settings.checkpoints.dir
        if settings.strategy == "tree":
            trials = None  # type: ignore[assignment]  # a tree's size follows from its shape
        sampler = DiskSampler(ckpt_dir)
        sampler.start()
        with ComputeClock() as compute, OptunaClock() as opt, TrialsClock(compute, opt) as clock:
            summary = runner.run_study(path, trials=trials, storage=storage)
            span = time.perf_counter() - clock.start
        sampler.stop.set()
        sampler.join()
        n = len(clock.states)
        comp = compute.seconds - clock.compute_at_start
        in_optuna = opt.seconds - clock.optuna_at_start
        return {
            "trials": n,
            "states": summary.states,
            "trial_wall_s": span,
            "trial_compute_s": comp,
            "overhead_total": (span - comp) / span,
            "optuna_share": in_optuna / span,
            "compute_ms_per_trial": comp / n * 1000,
            "overhead_ms_per_trial": (span - comp) / n * 1000,
            "optuna_ms_per_trial": in_optuna / n * 1000,
            "disk_peak": sampler.peak,
            "disk_end": _tree_bytes(ckpt_dir),
            "db_bytes": _tree_bytes(workdir) - _tree_bytes(ckpt_dir),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(ROOT, "studies", "quickstart.yaml"))
    p.add_argument("--trials", type=int, nargs="+", default=[10, 100])
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = {n: run(args.study, n) for n in args.trials}
    print()
    print("| trials | trials' wall s | task compute s | outside training / in Optuna's calls "
          "| per trial: compute / outside / of which in Optuna's calls "
          "| checkpoints high-water | at end | study db |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results.values():
        print(
            f"| {r['trials']} | {r['trial_wall_s']:.2f} | {r['trial_compute_s']:.2f} | "
            f"{r['overhead_total'] * 100:.1f} % / {r['optuna_share'] * 100:.1f} % | "
            f"{r['compute_ms_per_trial']:.0f} / {r['overhead_ms_per_trial']:.0f} / "
            f"{r['optuna_ms_per_trial']:.0f} ms | {r['disk_peak'] / 1e6:.1f} MB | "
            f"{r['disk_end'] / 1e6:.1f} MB | {r['db_bytes'] / 1e6:.1f} MB |"
        )
    lo, hi = results[args.trials[0]], results[args.trials[-1]]
    print(
        f"\ndisk high-water {args.trials[-1]} trials / {args.trials[0]} trials: "
        f"{hi['disk_peak'] / lo['disk_peak']:.2f}x (target <= 1.1x)"
    )


if __name__ == "__main__":
    main()
