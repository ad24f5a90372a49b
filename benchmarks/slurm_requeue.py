"""examples/slurm/hpsearch-array.sbatch for real, on a one-machine SLURM cluster: a job array of
`hpsearch worker`s with one (stand-in) GPU each grows a fork tree on PostgreSQL, and pre-emption
happens both ways SLURM does it: each task's time limit is near from the start (`--time=2
--signal=B:TERM@90`: the warning comes within its first minute), so the task checkpoints and
requeues itself; and once a task has started again, it is requeued mid-trial from outside
(`scontrol requeue`, as an administrator or a pre-emption does). Each requeued task starts again
(SLURM holds a requeued task about 2 minutes) and the interrupted trials continue from their own
checkpoints.

    python benchmarks/slurm_requeue.py [--tasks 1] [--gpus 2] [--step-s 0.2]

Needs Debian's `slurm-wlm` (slurmctld, slurmd, munge) and the PostgreSQL server binaries; runs
as root (slurmd does). Everything lives in a temporary directory: munged on its own socket and
key, slurmctld and slurmd on free ports with their state there, `--gpus` stand-in GPUs (character
devices like /dev/null: SLURM hands one to each task as CUDA_VISIBLE_DEVICES), a throwaway
PostgreSQL (tests/pgserver.py). The training step sleeps `--step-s` (benchmarks/gpu_standin.py),
so a node lasts some seconds. Prints what happened, for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the throwaway PostgreSQL of the tests
SBATCH = os.path.join(ROOT, "examples", "slurm", "hpsearch-array.sbatch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class Cluster:
    """munged, slurmctld and slurmd of one machine, in `root`."""

    def __init__(self, root: str, gpus: int) -> None:
        self.root, self.gpus = root, gpus
        self.conf = os.path.join(root, "slurm.conf")
        self.env = {**os.environ, "SLURM_CONF": self.conf}
        self.pidfiles = [os.path.join(root, n) for n in
                         ("slurmd.pid", "slurmctld.pid", "munge/munged.pid")]  # fmt: skip

    def start(self) -> None:
        r, host = self.root, socket.gethostname()
        for d in ("state", "spool", "munge"):
            os.makedirs(os.path.join(r, d), mode=0o700, exist_ok=True)
        key = os.path.join(r, "munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = os.path.join(r, "munge", "munge.sock")
        subprocess.run(["munged", "--force", f"--socket={sock}", f"--key-file={key}",
                        f"--pid-file={r}/munge/munged.pid", f"--log-file={r}/munge/munged.log",
                        f"--seed-file={r}/munge/seed"], check=True)  # fmt: skip
        for i in range(self.gpus):
            os.mknod(os.path.join(r, f"gpu{i}"), 0o666 | 0o020000, os.makedev(1, 3))
        with open(os.path.join(r, "gres.conf"), "w") as f:
            f.write(f"NodeName={host} Name=gpu File={r}/gpu[0-{self.gpus - 1}]\n")
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=hpsearch
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=600
NodeName={host} CPUs={max(2, self.gpus)} RealMemory=4000 Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        subprocess.run(["slurmctld", "-i"], env=self.env, check=True)
        subprocess.run(["slurmd"], env=self.env, check=True)
        for _ in range(100):
            out = self.run("sinfo", "-h", "-o", "%t")
            if out.strip() == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the node did not come up: {self.run('sinfo')}")

    def run(self, *cmd: str) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        return done.stdout + done.stderr

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
        for path in self.pidfiles:  # only the daemons this script started, by their pid
            pid = _pid(path)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        time.sleep(1)


def _study(workdir: str, storage: str) -> str:
    doc = {
        "name": "slurm",
        "task": os.path.join(ROOT, "benchmarks", "gpu_standin.py") + ":SleepyDigits",
        "seed": 0,
        "storage": storage,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "checkpoints": {"dir": os.path.join(workdir, "checkpoints"), "every": 0.125,
                        "keep_best": 2},
        "tree": {"roots": 4, "rungs": [0.5, 1.0], "keep": 0.5, "children": 2,
                 "hparams": {"weight_decay": 1e-4, "hidden": 64}},
        "trials": {"epochs": 1, "eval_every": 0.25},
        "schedule": {"name": "wsd", "decay": 0.25},
        "search_space": {"lr": {"float": [1e-4, 3e-2], "log": True},
                         "dropout": {"float": [0.0, 0.5]},
                         "batch_size": {"categorical": [32, 64]}},
        "sampler": {"name": "TPESampler", "n_startup_trials": 3},
        "pruner": {"name": "NopPruner"},
    }  # fmt: skip
    path = os.path.join(workdir, "study.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


@contextlib.contextmanager
def _session(path: str, storage: str) -> Iterator:
    from hpsearch.search.session import Session

    s = Session.open(path, storage=storage, create=False)
    try:
        yield s
    finally:
        s.close()


def _midway(path: str, storage: str, pids: set[int]) -> tuple[int, int] | None:
    """(trial, pid): a trial running in one of `pids` with a committed checkpoint of its own."""
    with _session(path, storage) as s:
        lin = s.lineage
        for a in lin.attempts():
            if a.status != "running" or a.trial < 0 or a.pid not in pids:
                continue
            mine = lin.checkpoints(trial=a.trial, statuses=("committed",))
            if any(r.created > a.started for r in mine):
                return a.trial, a.pid
    return None


def _task_pids(cluster: Cluster, job: str) -> dict[int, str]:
    """The `hpsearch worker` processes of the job's running tasks: pid -> task id."""
    out: dict[int, str] = {}
    lines = cluster.run("squeue", "-h", "-j", job, "-t", "R", "-o", "%i %A").split("\n")
    for line in filter(None, (x.strip() for x in lines)):
        task, jobid = line.split()
        pids = cluster.run("scontrol", "listpids", jobid).split("\n")[1:]
        for row in pids:
            parts = row.split()
            if not parts or not parts[0].isdigit():
                continue
            pid = int(parts[0])
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if b"worker" in cmd and b"hpsearch" in b" ".join(cmd):
                out[pid] = task
    return out


def _finished(cluster: Cluster, job: str) -> bool:
    """Has every task of the array ended (completed, failed or cancelled for good)? A requeued
    task is PENDING again; slurmctld keeps ended tasks' records for MinJobAge."""
    states = re.findall(r"JobState=(\w+)", cluster.run("scontrol", "show", "job", job))
    return bool(states) and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                                for s in states)  # fmt: skip


def _starts(workdir: str) -> dict[str, list[str]]:
    """Each task log's lines that say what happened: starts, stops, continuations."""
    out = {}
    for name in sorted(os.listdir(workdir)):
        if name.startswith("hpsearch-") and name.endswith(".log"):
            with open(os.path.join(workdir, name)) as f:
                out[name] = [x.strip() for x in f if x.startswith("task ") or "signal" in x
                             or "interrupted" in x or "continued from" in x]  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1, help="array tasks (workers)")
    p.add_argument("--gpus", type=int, default=2, help="stand-in GPUs on the node")
    p.add_argument("--step-s", type=float, default=0.2, help="a training step's sleep")
    args = p.parse_args()
    for binary in ("slurmctld", "slurmd", "munged", "sbatch", "initdb"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} not found: apt-get install slurm-wlm postgresql")
    from pgserver import start_server

    workdir = tempfile.mkdtemp(prefix="hpsearch-slurm-")
    os.chmod(workdir, 0o755)
    cluster = Cluster(os.path.join(workdir, "cluster"), args.gpus)
    server = start_server()
    t0 = time.perf_counter()
    try:
        cluster.start()
        storage = server.create_database()
        path = _study(workdir, storage)
        env = {"HPSEARCH": f"{sys.executable} -m hpsearch", "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1", "HPSEARCH_STANDIN_STEP_S": str(args.step_s)}  # fmt: skip
        os.environ.update(env)
        cluster.env.update(env)
        from hpsearch.search.session import Session

        Session.open(path, storage=storage).close()  # the study, before the workers open it
        log = os.path.join(workdir, "hpsearch-%A_%a.log")
        out = cluster.run("sbatch", "--parsable", f"--array=0-{args.tasks - 1}",
                          f"--output={log}", "--cpus-per-task=1", "--time=2",
                          "--signal=B:TERM@90", SBATCH, path)  # fmt: skip
        job = out.strip().split(";")[0]
        print(f"submitted job array {job}: {args.tasks} task(s), one stand-in GPU each, "
              f"--time=2 --signal=B:TERM@90", flush=True)  # fmt: skip
        requeued: list[str] = []
        while not _finished(cluster, job):
            pids = _task_pids(cluster, job)
            again = [n for n, lines in _starts(workdir).items()
                     if sum(x.startswith("task ") for x in lines) >= 2]  # fmt: skip
            found = _midway(path, storage, set(pids)) if pids and again and not requeued else None
            if found is not None:
                trial, pid = found
                print(f"{time.perf_counter() - t0:.0f} s: scontrol requeue {pids[pid]}: its "
                      f"worker {pid} is mid-way through trial {trial}", flush=True)  # fmt: skip
                print(cluster.run("scontrol", "requeue", pids[pid]).strip(), flush=True)
                requeued.append(pids[pid])
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        with _session(path, storage) as s:
            trials = s.study.get_trials(deepcopy=False)
            attempts = s.lineage.attempts()
            states = sorted({t.state.name for t in trials})
            print(f"\n{len(trials)} nodes, states {states}, {wall:.0f} s in all")
            for trial in sorted({a.trial for a in attempts if a.trial >= 0 and a.resumed_from}):
                for a in (a for a in attempts if a.trial == trial):
                    print(f"  trial {trial}: attempt of pid {a.pid} {a.status}, from "
                          f"{a.resumed_from or 'its start'}, steps {a.start_step}.."
                          f"{a.start_step + a.steps}")  # fmt: skip
            done = [a.trial for a in attempts if a.status == "done" and a.trial >= 0]
            print(f"each node done once: {sorted(done) == sorted(t.number for t in trials)}")
        for name, lines in _starts(workdir).items():
            print(f"--- {name}\n" + "\n".join(lines))
    finally:
        cluster.stop()
        server.stop()
        print(f"(logs kept in {workdir})")


if __name__ == "__main__":
    main()
