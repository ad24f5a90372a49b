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
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hpsearch.errors import HpsearchError, RankLost, TrainingDiverged
from hpsearch.training import state as st
from hpsearch.training.collectives import Link
from hpsearch.training.loop import Trainer
from hpsearch.training.progress import Budget, Every
from hpsearch.training.ranks import Dismissed, Follower, Gang, reseed
from hpsearch.training.team import _LEFT, _OPEN, _READY, rank_device

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
    """A follower that rank 0's `Team` started (its arguments as one JSON)."""
    args = json.loads((argv or sys.argv[1:])[0])
    _die_with_parent(int(args["parent"]))
    _ignore_stops()
    torch.set_num_threads(int(args["threads"]))
    try:
        task, datasets = _load(args)
        serve(args, task, datasets)
    except HpsearchError as exc:  # the task's error, which rank 0 meets and reports too
        print(f"hpsearch: rank {args['rank']}: {exc}", file=sys.stderr)
        _leave(1)
    _leave(0)
    return 0


def launched(args: dict[str, Any], *, patience_s: float) -> int:
    """A follower that a launcher started (`hpsearch rank`), on any machine: it serves rank 0's
    team, and when that team ends without an `exit` (a rank died, rank 0 started a new team)
    it connects again, for as long as `patience_s` passes without a team to join."""
    _ignore_stops()
    task, datasets = _load(args)
    lost = time.monotonic()  # when this rank last lost a team (or started); inf: in one

    def joined() -> None:
        nonlocal lost
        lost = math.inf

    while True:
        try:
            serve(args, task, datasets, on_join=joined)
            return 0
        except (HpsearchError, RuntimeError) as exc:  # RuntimeError: rank 0's store went away
            if isinstance(exc, HpsearchError) and not isinstance(exc, RankLost):
                print(f"hpsearch: rank {args['rank']}: {exc}", file=sys.stderr)
                return 1  # the task's error, which rank 0 meets and reports too
            if lost == math.inf:
                lost = time.monotonic()
            print(f"rank {args['rank']}: no team ({' '.join(str(exc).split())[:200]}); "
                  "joining the next one", flush=True)  # fmt: skip
        if time.monotonic() - lost > patience_s:
            print(f"rank {args['rank']}: no team to join for {patience_s:g} s; leaving")
            return 1
        time.sleep(1.0)


def serve(
    args: dict[str, Any],
    task: Any,
    datasets: tuple[Any, Any],
    on_join: Callable[[], None] | None = None,
) -> None:
    """Join rank 0's team and do what it says, until it says `exit`."""
    rank, world = int(args["rank"]), int(args["world"])
    sizes = [len(datasets[0]), len(datasets[1])]
    timeout = timedelta(seconds=float(args["timeout_s"]))
    server = dist.TCPStore(args["host"], int(args["port"]), world, is_master=False, timeout=timeout)
    while not server.check([_OPEN]):  # rank 0 is between teams: wait for the next one
        time.sleep(0.02)
    store = dist.PrefixStore(f"hpsearch/{server.get(_OPEN).decode()}/", server)
    store.set(f"{_READY}{rank}", json.dumps({"sizes": sizes}))
    device = rank_device(args["device"], int(args.get("local_rank", rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    link = Link.connect(
        store, rank=rank, world=world, device=device, timeout_s=float(args["timeout_s"])
    )
    if on_join is not None:
        on_join()
    gang = Gang(link)
    try:
        while True:
            said = link.next_command()
            if said["cmd"] == "exit":
                store.set(f"{_LEFT}{rank}", "")  # rank 0 keeps the store until every rank has
                return
            torch.set_num_threads(int(said["threads"]))  # rank 0's: the same float sums
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


def _load(args: dict[str, Any]) -> tuple[Any, tuple[Any, Any]]:
    from hpsearch.config.taskload import load_task

    task = load_task(args["task"], study_path=args["study_path"])()
    return task, task.datasets()


def _ignore_stops() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # rank 0 decides when a trial stops


def _leave(code: int) -> None:
    """Exit without the interpreter's teardown: the store's and gloo's C++ threads, destroyed
    at exit, can abort it ("terminate called without an active exception") after all is done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
