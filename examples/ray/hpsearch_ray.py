"""hpsearch workers as Ray tasks on a Ray cluster: one `hpsearch worker` process per task, one GPU
each, all on one study (PostgreSQL, or a journal when the cluster is one machine).

    pip install 'ray[default]'           # not a dependency of hpsearch
    ray start --head                     # then on each other machine: ray start --address=HEAD:6379
    python examples/ray/hpsearch_ray.py study.yaml --workers 8 --storage postgresql://...

Each task runs `hpsearch worker` as a process of its own, so a worker is exactly what the command
line runs (its signals, its exit status, one process per GPU); Ray gives each task one GPU
(`num_gpus=1`: it sets CUDA_VISIBLE_DEVICES). Pre-emption is part of the contract: a worker
stopped by SIGTERM (a spot node going away, `ray stop`) checkpoints its trial and exits 130, and
the task raises `Stopped`, which Ray runs again (`retry_exceptions`); a task whose node dies
outright is run again by Ray too (`max_retries`), and the trial it held is taken over once its
heartbeat is stale (trials.grace_s). Either way the trial continues from its newest checkpoint.
A worker that finds the study done exits 0; a mistake in the study file (exit 2) or another
failure (exit 1) is not retried. Checkpoints must be on storage every node reaches (a shared file
system, or s3://... with `checkpoints.storage_options`).

`--local-gpus N` starts a one-machine Ray instead of joining a cluster, with N GPUs declared
(they need not exist: a way to try the recipe on a laptop, as benchmarks/RESULTS.md did).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import ray


class Stopped(Exception):
    """The worker was stopped by a signal after checkpointing (exit 130): run it again."""


@ray.remote(num_gpus=1, max_retries=3, retry_exceptions=[Stopped])
def hpsearch_worker(study: str, storage: str | None) -> int:
    cmd = [sys.executable, "-m", "hpsearch", "worker", study]
    if storage:
        cmd += ["--storage", storage]
    code = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if code == 130:
        raise Stopped(f"worker stopped by a signal on GPU {os.environ.get('CUDA_VISIBLE_DEVICES')}")
    if code != 0:
        raise RuntimeError(f"hpsearch worker exited {code}")
    return code


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--storage", default=None, help="the study's storage URL (default: the file's)")
    p.add_argument("--local-gpus", type=int, default=None)
    args = p.parse_args()
    study = os.path.abspath(args.study)
    if args.local_gpus is not None:
        ray.init(num_gpus=args.local_gpus)
    else:
        ray.init(address="auto")  # the cluster this machine joined with `ray start`
    tasks = [hpsearch_worker.remote(study, args.storage) for _ in range(args.workers)]
    codes = ray.get(tasks)
    print(f"{len(codes)} workers finished: exit {sorted(set(codes))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
