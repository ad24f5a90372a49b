"""A follower rank of a trial of `trials.processes: N` (started by `hpsearch.training.team`).

    python -m hpsearch.training.follower '{"rank": 1, "world": 2, "host": ..., "port": ...}'

It loads the task and its datasets, says so in the store, joins the trial's process group, and
then does what rank 0 says: for each `train` command it rebuilds the trainer from the state rank
0 sent (as a resume would), takes its own RNG, and runs the same train() call in lockstep, until
the `exit` command. It talks to nothing else: no Optuna, no lineage, no store.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hpsearch.errors import TrainingDiverged
from hpsearch.training import state as st
from hpsearch.training.loop import Trainer
from hpsearch.training.progress import Budget, Every
from hpsearch.training.ranks import Dismissed, Follower, Gang, Link, reseed
from hpsearch.training.team import _READY, rank_device

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when rank 0's dies (Linux), and leave now if it is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a collective's error or timeout ends it
        pass
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = json.loads((argv or sys.argv[1:])[0])
    _die_with_parent(int(args["parent"]))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # rank 0 decides when the trial stops
    torch.set_num_threads(int(args["threads"]))
    rank, world = int(args["rank"]), int(args["world"])
    from hpsearch.config.taskload import load_task

    task = load_task(args["task"], study_path=args["study_path"])()
    datasets = task.datasets()
    sizes = [len(datasets[0]), len(datasets[1])]  # type: ignore[arg-type]
    timeout = timedelta(seconds=float(args["timeout_s"]))
    store = dist.TCPStore(args["host"], int(args["port"]), world, is_master=False, timeout=timeout)
    store.set(f"{_READY}{rank}", json.dumps({"sizes": sizes}))
    device = rank_device(args["device"], rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    link = Link.connect(
        store, rank=rank, world=world, device=device, timeout_s=float(args["timeout_s"])
    )
    gang = Gang(link)
    try:
        while True:
            said = link.next_command()
            if said["cmd"] == "exit":
                link.close()
                sys.stdout.flush()
                sys.stderr.flush()
                # not through the interpreter's exit: the store's and gloo's C++ threads,
                # destroyed at exit, can abort it ("terminate called without an active
                # exception") after all is done
                os._exit(0)
            tensors, info = link.bcast_state()
            trainer = Trainer.restore(
                task, tensors, info, device=device, num_workers=int(args["num_workers"]),
                datasets=datasets,
            )  # fmt: skip
            _adopt(trainer, gang, said)
            # rank 0 may stop (or diverge) at the same point: then wait for its next call
            with contextlib.suppress(Dismissed, TrainingDiverged):
                trainer.train(
                    Budget(**said["until"]), hooks=Follower(gang),
                    eval_every=_every(said["eval_every"]),
                    checkpoint_every=_every(said["checkpoint_every"]),
                )  # fmt: skip
    finally:
        link.close()


def _adopt(trainer: Trainer, gang: Gang, said: dict[str, Any]) -> None:
    """What a restore does not set: this rank's RNG, and the loop's own bookkeeping."""
    rng = said["rng"]
    if rng is None:
        reseed(trainer.seed, gang.rank)  # a fresh run: every rank its own stream
    else:
        st.set_rng_state(rng[gang.rank])
    trainer.saved_step = said["saved_step"]
    trainer.gang = gang


def _every(value: dict[str, Any] | None) -> Every | None:
    return Every(**value) if value else None


if __name__ == "__main__":
    sys.exit(main())
