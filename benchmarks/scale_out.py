"""Scale-out on one machine: trials per minute with 1, 2 and 4 workers, on SQLite and on
PostgreSQL, and the bookkeeping per trial as a share of its wall time on each.

    python benchmarks/scale_out.py [--study studies/quickstart.yaml] [--trials 40]
        [--workers 1 2 4]

PostgreSQL is a throwaway server (`initdb` + `pg_ctl`, tests/pgserver.py: fsync off, as a
benchmark database on one machine may be). Each run is `hpsearch run --workers W` on a fresh copy
of the study; trials per minute count the trials' phase (first trial start to last trial end,
from Optuna's own timestamps), so the shared warm-up and start-up are left out. The bookkeeping
share is benchmarks/study_overhead.py's measurement (one worker, in-process clocks) on each
database. The machine's cores bound the speed-up: note them with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import optuna
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the throwaway PostgreSQL of the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _study_copy(study: str, workdir: str, trials: int) -> str:
    with open(study) as f:
        doc = yaml.safe_load(f)
    task = doc["task"]
    file, _, cls = task.rpartition(":")
    if file and not os.path.isabs(file):
        doc["task"] = os.path.join(os.path.dirname(os.path.abspath(study)), file) + ":" + cls
    doc["trials"]["n"] = trials
    doc["checkpoints"]["dir"] = os.path.join(workdir, "checkpoints")
    doc.pop("storage", None)
    path = os.path.join(workdir, "study.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def trials_per_minute(study: str, trials: int, workers: int, storage: str) -> dict[str, float]:
    workdir = tempfile.mkdtemp(prefix="hpsearch-scale-")
    try:
        path = _study_copy(study, workdir, trials)
        url = storage if storage != "sqlite" else f"sqlite:///{workdir}/study.db"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "hpsearch", "run", path, "--workers", str(workers),
               "--storage", url]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={
            **os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        wall = time.perf_counter() - t0
        with open(path) as f:
            name = yaml.safe_load(f)["name"]
        done = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        starts = [t.datetime_start.timestamp() for t in done if t.datetime_start]
        ends = [t.datetime_complete.timestamp() for t in done if t.datetime_complete]
        span = max(ends) - min(starts)
        return {"trials": len(done), "span_s": span, "per_min": len(done) / span * 60,
                "wall_s": wall}  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(ROOT, "studies", "quickstart.yaml"))
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import study_overhead

    from pgserver import start_server

    server = start_server()
    try:
        rows = []
        for storage in ("sqlite", "postgresql"):
            for w in args.workers:
                url = server.create_database() if storage == "postgresql" else "sqlite"
                r = trials_per_minute(args.study, args.trials, w, url)
                rows.append((storage, w, r))
                print(f"{storage} {w} workers: {r['per_min']:.1f} trials/min "
                      f"({r['trials']} trials in {r['span_s']:.1f} s; run {r['wall_s']:.1f} s)",
                      flush=True)  # fmt: skip
        share = {}
        for storage in ("sqlite", "postgresql"):
            url = server.create_database() if storage == "postgresql" else None
            o = study_overhead.run(args.study, args.trials, storage=url)
            share[storage] = o
            print(f"{storage}: bookkeeping {o['overhead_total'] * 100:.1f} % of trial wall time "
                  f"({o['overhead_ms_per_trial']:.0f} ms a trial, {o['optuna_ms_per_trial']:.0f} "
                  "ms in Optuna's calls)", flush=True)  # fmt: skip
    finally:
        server.stop()
    print(f"\n{os.cpu_count()} cores; {args.trials} trials of {os.path.basename(args.study)}\n")
    print("| database | workers | trials/min | trials' phase s | run s |")
    print("| --- | --- | --- | --- | --- |")
    for storage, w, r in rows:
        print(f"| {storage} | {w} | {r['per_min']:.1f} | {r['span_s']:.1f} | {r['wall_s']:.1f} |")
    print("\n| database | outside training (1 worker) | ms a trial | of which Optuna's calls |")
    print("| --- | --- | --- | --- |")
    for storage, o in share.items():
        print(
            f"| {storage} | {o['overhead_total'] * 100:.1f} % | "
            f"{o['overhead_ms_per_trial']:.0f} | {o['optuna_ms_per_trial']:.0f} ms |"
        )


if __name__ == "__main__":
    main()
