"""Scale-out on one machine: trials per minute with 1, 2 and 4 workers, on SQLite, the journal
storage and PostgreSQL, the database connections each worker held at its peak (PostgreSQL), and
the bookkeeping per trial as a share of its wall time on each.

    python benchmarks/scale_out.py [--study studies/quickstart.yaml] [--trials 40]
        [--workers 1 2 4] [--storages sqlite journal postgresql]

How the bookkeeping grows with the study (100 and 5,000 trials) is benchmarks/bookkeeping_growth.py;
Optuna's gRPC proxy against PostgreSQL is benchmarks/grpc_proxy.py; the SLURM launch path is
benchmarks/slurm_requeue.py; 16 workers through PgBouncer is tests/test_pooler.py.

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
import threading
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
    if "tree" not in doc:  # a tree's size follows from its shape
        doc["trials"]["n"] = trials
    doc["checkpoints"]["dir"] = os.path.join(workdir, "checkpoints")
    doc.pop("storage", None)
    path = os.path.join(workdir, "study.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


class Connections(threading.Thread):
    """Samples pg_stat_activity every 0.1 s: the most connections any one hpsearch process
    (its `application_name`) and all of them together held to `database`."""

    def __init__(self, admin_url: str, database: str) -> None:
        super().__init__(daemon=True)
        self.admin_url, self.database = admin_url, database
        self.per_process = self.total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as con:
            while not self.stop.is_set():
                rows = con.execute(
                    "select application_name, count(*) from pg_stat_activity where datname = "
                    "%s and application_name like 'hpsearch %%' group by 1",
                    (self.database,),
                ).fetchall()
                self.per_process = max([self.per_process, *(n for _, n in rows)])
                self.total = max(self.total, sum(n for _, n in rows))
                time.sleep(0.1)


def trials_per_minute(
    study: str, trials: int, workers: int, storage: str, admin_url: str | None = None
) -> dict[str, float]:
    workdir = tempfile.mkdtemp(prefix="hpsearch-scale-")
    try:
        path = _study_copy(study, workdir, trials)
        url = {"sqlite": f"sqlite:///{workdir}/study.db",
               "journal": f"journal:///{workdir}/study.journal"}.get(storage, storage)  # fmt: skip
        conns = None
        if admin_url is not None:
            conns = Connections(admin_url, url.rsplit("/", 1)[1])
            conns.start()
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "hpsearch", "run", path, "--workers", str(workers),
               "--storage", url]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={
            **os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        wall = time.perf_counter() - t0
        if conns is not None:
            conns.stop.set()
            conns.join()
        from hpsearch.search.session import Session

        s = Session.open(path, storage=url, create=False)
        try:
            done = s.study.get_trials(deepcopy=False)
        finally:
            s.close()
        starts = [t.datetime_start.timestamp() for t in done if t.datetime_start]
        ends = [t.datetime_complete.timestamp() for t in done if t.datetime_complete]
        span = max(ends) - min(starts)
        return {"trials": len(done), "span_s": span, "per_min": len(done) / span * 60,
                "wall_s": wall, "conn_per_worker": conns.per_process if conns else None,
                "conn_total": conns.total if conns else None}  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(ROOT, "studies", "quickstart.yaml"))
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--storages", nargs="+", default=["sqlite", "journal", "postgresql"])
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import study_overhead

    from pgserver import start_server

    server = start_server()
    try:
        rows = []
        for storage in args.storages:
            for w in args.workers:
                pg = storage == "postgresql"
                url = server.create_database() if pg else storage
                admin = server.url("postgres") if pg else None
                r = trials_per_minute(args.study, args.trials, w, url, admin)
                rows.append((storage, w, r))
                print(f"{storage} {w} workers: {r['per_min']:.1f} trials/min "
                      f"({r['trials']} trials in {r['span_s']:.1f} s; run {r['wall_s']:.1f} s; "
                      f"connections {r['conn_per_worker']} a worker, {r['conn_total']} in all)",
                      flush=True)  # fmt: skip
        share = {}
        for storage in args.storages:
            workdir = tempfile.mkdtemp(prefix="hpsearch-scale-")
            url = {"postgresql": server.create_database(), "sqlite": None,
                   "journal": f"journal:///{workdir}/study.journal"}[storage]  # fmt: skip
            o = study_overhead.run(args.study, args.trials, storage=url)
            shutil.rmtree(workdir, ignore_errors=True)
            share[storage] = o
            print(f"{storage}: bookkeeping {o['overhead_total'] * 100:.1f} % of trial wall time "
                  f"({o['overhead_ms_per_trial']:.0f} ms a trial, {o['optuna_ms_per_trial']:.0f} "
                  "ms in Optuna's calls)", flush=True)  # fmt: skip
    finally:
        server.stop()
    print(f"\n{os.cpu_count()} cores; {args.trials} trials of {os.path.basename(args.study)}\n")
    print("| storage | workers | trials/min | trials' phase s | run s | connections: a worker's "
          "peak / all |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for storage, w, r in rows:
        c = f"{r['conn_per_worker']} / {r['conn_total']}" if r["conn_total"] is not None else "-"
        print(f"| {storage} | {w} | {r['per_min']:.1f} | {r['span_s']:.1f} | {r['wall_s']:.1f} | "
              f"{c} |")  # fmt: skip
    print("\n| database | outside training (1 worker) | ms a trial | of which Optuna's calls |")
    print("| --- | --- | --- | --- |")
    for storage, o in share.items():
        print(
            f"| {storage} | {o['overhead_total'] * 100:.1f} % | "
            f"{o['overhead_ms_per_trial']:.0f} | {o['optuna_ms_per_trial']:.0f} ms |"
        )


if __name__ == "__main__":
    main()
