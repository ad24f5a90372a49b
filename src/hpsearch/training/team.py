"""Rank 0's followers: the processes a `Team` starts for the trials of `trials.processes: N`.

    with Team(2, task="examples/digits.py:DigitsMLP", study_path=..., device="cpu") as team:
        team.attach(trainer)
        trainer.train(budget, hooks=hooks)
        team.release(trainer)  # the team stays for the next trainer while `team.healthy`

A follower is `python -m hpsearch.training.follower`, started on this machine with this
process's `sys.path` and environment (its GPU: rank r trains on the r-th visible one). It dies
with this process (PR_SET_PDEATHSIG), ignores SIGINT and SIGTERM (rank 0 decides when a trial
stops, and checkpoints every rank once), and waits for rank 0's next command between training
calls, however long, until it is told to leave. A team whose rank 0 raised inside a collective,
or one of whose followers died, is no longer `healthy`: its followers are killed when it
closes, and the next trial starts a new team.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from hpsearch.errors import RankSetupError
from hpsearch.training.collectives import Link
from hpsearch.training.ranks import Gang

if TYPE_CHECKING:
    from hpsearch.training.loop import Trainer

HOST = "127.0.0.1"
_OPEN = "hpsearch/open"  # the team that followers may join now (its id), while rank 0 waits
_READY = "hpsearch/ready/"  # a follower's key in the store: its dataset sizes, once loaded
_LEFT = "hpsearch/left/"  # a follower's key once it has read the `exit` command


def rank_device(device: str, rank: int) -> torch.device:
    """Rank r's device: the r-th visible GPU for `cuda`, the CPU for `cpu`."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", (dev.index or 0) + rank)


class Team:
    """Starts a trial's followers, connects rank 0 (this process) to them, and ends them."""

    def __init__(
        self,
        world: int,
        *,
        task: str,
        study_path: str | None,
        device: str,
        timeout_s: float,
        num_workers: int = 0,
        sizes: tuple[int, int] | None = None,
        listen: tuple[str, int] | None = None,
    ) -> None:
        if world < 2:
            raise ValueError(f"a team has 2 or more ranks, got {world}")
        self.world, self.task, self.study_path = world, task, study_path
        self.device, self.timeout_s, self.num_workers = device, timeout_s, num_workers
        self.sizes = sizes  # rank 0's (train, val) dataset sizes: every rank must see the same
        # None: start the followers here; (host, port): a launcher starts them (`hpsearch rank`
        # --connect host:port) on any machine, and this process waits for them there
        self.listen = listen
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gang: Gang | None = None
        self.trainers: list[Trainer] = []

    # -- start --------------------------------------------------------------------------------

    def __enter__(self) -> Team:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Team:
        if torch.device(self.device).type == "cuda":
            seen = torch.cuda.device_count()
            last = (torch.device(self.device).index or 0) + self.world
            if last > seen:
                raise RankSetupError(
                    f"trials.processes: {self.world} on {self.device} needs {last} visible "
                    f"GPU(s), one per rank; this process sees {seen} (CUDA_VISIBLE_DEVICES="
                    f"{os.environ.get('CUDA_VISIBLE_DEVICES')})"
                )
        if dist.is_initialized():
            raise RankSetupError(
                "this process already leads a team of ranks (or is one): one trial of several "
                "processes at a time per process"
            )
        host, port = self.listen or (HOST, 0)
        if host in ("127.0.0.1", "localhost"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks meet on loopback
        timeout = timedelta(seconds=self.timeout_s)
        server = dist.TCPStore(
            host, port, self.world, is_master=True, timeout=timeout, wait_for_workers=False
        )
        # every team's keys under its own id: a follower that found an earlier team of this
        # address (a launcher restarts a rank while rank 0 replaces the team it broke) cannot
        # take a place in this one, nor wait in the other's rendezvous
        team = secrets.token_hex(8)
        store = dist.PrefixStore(f"hpsearch/{team}/", server)
        try:
            if self.listen is None:
                for rank in range(1, self.world):
                    self.procs.append(self._spawn(rank, server.port))
            server.set(_OPEN, team)
            self._wait_ready(store)
            server.delete_key(_OPEN)  # every place is taken
            link = Link.connect(
                store, rank=0, world=self.world, device=rank_device(self.device, 0),
                timeout_s=self.timeout_s, why=self.why,
            )  # fmt: skip
        except BaseException:
            self._kill()
            raise
        self.gang = Gang(link)
        return self

    def _spawn(self, rank: int, port: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # imports as rank 0 does
        args = {
            "rank": rank, "world": self.world, "host": HOST, "port": port,
            "task": self.task, "study_path": self.study_path, "device": self.device,
            "timeout_s": self.timeout_s, "num_workers": self.num_workers,
            "threads": torch.get_num_threads(), "parent": os.getpid(),
        }  # fmt: skip
        cmd = [sys.executable, "-m", "hpsearch.training.follower", json.dumps(args)]
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def _wait_ready(self, store: Any) -> None:
        """Wait until every follower has loaded the task and its data, watching that none died
        on the way (an import error, a task that fails to build its datasets)."""
        deadline = time.monotonic() + self.timeout_s
        keys = [f"{_READY}{r}" for r in range(1, self.world)]
        while not store.check(keys):
            dead = self._dead()
            if dead:
                raise RankSetupError(f"a follower rank did not start: {dead}")
            if time.monotonic() > deadline:
                missing = [k.removeprefix(_READY) for k in keys if not store.check([k])]
                how = (
                    f"; start them with `hpsearch rank STUDY.yaml --connect "
                    f"{self.listen[0]}:{self.listen[1]} --rank R` for R in {', '.join(missing)}"
                    if self.listen is not None
                    else ""
                )
                raise RankSetupError(
                    f"the follower ranks {', '.join(missing)} did not join within "
                    f"{self.timeout_s:g} s (trials.rank_timeout_s){how}"
                )
            time.sleep(0.02)
        if self.sizes is None:
            return
        for r, key in enumerate(keys, start=1):
            sizes = tuple(json.loads(store.get(key).decode())["sizes"])
            if sizes != tuple(self.sizes):
                raise RankSetupError(
                    f"rank {r}'s datasets() gives {sizes[0]} training and {sizes[1]} "
                    f"validation samples, rank 0's {self.sizes[0]} and {self.sizes[1]}: every "
                    "rank must load the same data (seed any random split or generation)"
                )

    # -- use ----------------------------------------------------------------------------------

    def attach(self, trainer: Trainer) -> None:
        """Train `trainer` with this team's ranks (until it is released or the team ends)."""
        assert self.gang is not None
        trainer.gang = self.gang
        if trainer not in self.trainers:
            self.trainers.append(trainer)

    def release(self, trainer: Trainer) -> None:
        """`trainer` trains alone again."""
        trainer.gang = None
        trainer.stream.set_shard(None)
        if trainer in self.trainers:
            self.trainers.remove(trainer)

    @property
    def healthy(self) -> bool:
        """Every follower alive and waiting for rank 0's next command."""
        return self.gang is not None and self.gang.idle and not self._dead()

    def why(self) -> str:
        """What became of the followers, for an error on a collective (a follower that
        crashed closes its connections a moment before it exits)."""
        deadline = time.monotonic() + 2.0
        while not (dead := self._dead()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return f" ({dead})" if dead else ""

    def _dead(self) -> str:
        gone = [(r, p.poll()) for r, p in enumerate(self.procs, start=1) if p.poll() is not None]
        return ", ".join(f"rank {r} exited with code {code}" for r, code in gone)

    # -- end ----------------------------------------------------------------------------------

    def close(self) -> None:
        for trainer in list(self.trainers):
            self.release(trainer)
        healthy = self.healthy
        gang, self.gang = self.gang, None
        try:
            if gang is not None and healthy:
                with contextlib.suppress(RuntimeError):  # the store, if a rank broke it
                    gang.link.post({"cmd": "exit"})
                    # the store lives in this process: keep it until every follower has read
                    # the command (a launcher's followers are no processes of ours to wait on)
                    self._wait_left(gang.link.store, 10.0)
                self._wait(10.0)
        finally:
            self._kill()
            if gang is not None:
                gang.link.close()

    def _wait_left(self, store: Any, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        keys = [f"{_LEFT}{r}" for r in range(1, self.world)]
        while not store.check(keys) and time.monotonic() < deadline and not self._dead():
            time.sleep(0.01)

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))

    def _kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
