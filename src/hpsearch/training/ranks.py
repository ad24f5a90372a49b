"""One trial trained by N processes (ranks) in lockstep: data parallelism that stays exact.

Rank 0 is the process that runs the trial: it alone talks to Optuna, the lineage and the store.
Ranks 1..N-1 are *followers* (`hpsearch.training.follower`), started for the trial by `Team`.
Every rank holds the whole model and optimizer and runs the same loop; what keeps them one run:

- every rank draws the same global batches from the same `DataStream` and trains on its own
  contiguous share of each (`shard_bounds`), so a global batch holds the same samples whatever N;
- each rank's loss is weighted by its share of the global batch and the gradients are summed
  over the ranks in one flat buffer per dtype, in the model's parameter order: the mean over the
  global batch, summed in an order that depends on N only. (DistributedDataParallel rebuilds its
  gradient buckets after its first iteration, so a resumed DDP would sum in another order than
  the run it continues.) Every rank then takes the same optimizer step;
- buffers (BatchNorm's running statistics) are rank 0's, sent to every rank before each step, as
  DDP's `broadcast_buffers` does;
- rank 0 evaluates; every decision (prune, stop, lost lease) is rank 0's hook, and rank 0 tells
  the followers, after each hook, whether to go on;
- each rank draws from its own RNGs: they are gathered into rank 0's state at every checkpoint
  (`Trainer.rank_rng`) and each rank gets its own back when a run continues.

Control traffic (JSON, RNG states, the state the followers start from) goes through a gloo group
on the CPU; gradients through the trial's backend (NCCL on `cuda`). Nothing is pickled: JSON
travels as UTF-8 bytes in uint8 tensors.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from hpsearch import failpoints
from hpsearch.errors import CheckpointMismatch, RankLost, TaskError, TrainingDiverged
from hpsearch.training import state as st
from hpsearch.training.data import mix_seed
from hpsearch.training.progress import Budget, Every, Hooks

if TYPE_CHECKING:
    from hpsearch.training.loop import Trainer

_RANK_SEED = 7  # mixed into a fresh run's seed with the rank: each rank's own RNG stream
_COMMAND = "hpsearch/command/"  # rank 0's commands in the store, numbered


class Dismissed(Exception):
    """A follower's training stops because rank 0's did (a prune, a stop, a lost trial)."""


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [a, b) of a batch of `total` samples: the first
    `total % world` ranks take one sample more (a short last batch of an epoch may leave a
    rank none)."""
    q, r = divmod(total, world)
    a = rank * q + min(rank, r)
    return a, a + q + (1 if rank < r else 0)


def _as_bytes(obj: Any) -> torch.Tensor:
    data = json.dumps(obj, allow_nan=True).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _from_bytes(buf: torch.Tensor) -> Any:
    return json.loads(bytes(buf.numpy()).decode())


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise RankLost(f"rank 0 sent a tensor of unknown dtype {name!r}")
    return value


class Link:
    """The collectives of one trial's ranks. `why` says, when a collective fails, what became
    of the other ranks (rank 0 knows its followers' exit codes)."""

    def __init__(
        self,
        rank: int,
        world: int,
        device: torch.device,
        why: Callable[[], str] | None = None,
        store: Any = None,
    ) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.ctrl: Any = None  # the CPU group; None: the default group is gloo already
        self.why = why or (lambda: "")
        self.store = store  # rank 0's commands, which followers wait for between trials
        self.seq = 0

    @classmethod
    def connect(
        cls,
        store: Any,
        *,
        rank: int,
        world: int,
        device: torch.device,
        timeout_s: float,
        why: Callable[[], str] | None = None,
    ) -> Link:
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        link = cls(rank, world, device, why, store)
        if backend != "gloo":
            link.ctrl = dist.new_group(backend="gloo", timeout=timeout)
        return link

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as exc:  # gloo's "Connection closed by peer", a timeout, NCCL's
            text = " ".join(str(exc).split())[:300]
            raise RankLost(f"{what} failed: {text}{self.why()}") from exc

    # -- commands: through the store, so that a follower may wait for the next one as long as
    # rank 0 works on other things (a collective would time out)

    def post(self, command: dict[str, Any]) -> None:
        """Rank 0: the followers' next command."""
        self.seq += 1
        self.store.set(f"{_COMMAND}{self.seq}", json.dumps(command))
        if self.seq > 2:
            self.store.delete_key(f"{_COMMAND}{self.seq - 2}")  # every follower has read it

    def next_command(self) -> dict[str, Any]:
        """A follower: wait for rank 0's next command (a dead rank 0 ends the wait: the store
        lives in its process)."""
        self.seq += 1
        key = f"{_COMMAND}{self.seq}"
        while not self.store.check([key]):  # polled: a blocking wait warns at each timeout
            time.sleep(0.02)
        return dict(json.loads(self.store.get(key).decode()))

    # -- control: JSON and codes on the CPU ---------------------------------------------------

    def bcast_json(self, obj: Any = None) -> Any:
        """Rank 0's `obj`, on every rank."""

        def go() -> Any:
            buf = _as_bytes(obj) if self.rank == 0 else torch.empty(0, dtype=torch.uint8)
            n = torch.tensor([buf.numel()], dtype=torch.int64)
            dist.broadcast(n, 0, group=self.ctrl)
            if self.rank != 0:
                buf = torch.empty(int(n.item()), dtype=torch.uint8)
            dist.broadcast(buf, 0, group=self.ctrl)
            return obj if self.rank == 0 else _from_bytes(buf)

        return self._run("a message from rank 0", go)

    def bcast_code(self, code: int = 0) -> int:
        def go() -> int:
            t = torch.tensor([code], dtype=torch.int64)
            dist.broadcast(t, 0, group=self.ctrl)
            return int(t.item())

        return int(self._run("rank 0's decision", go))

    def gather_json(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""

        def go() -> list[Any]:
            buf = _as_bytes(obj)
            n = torch.tensor([buf.numel()], dtype=torch.int64)
            sizes = [torch.zeros_like(n) for _ in range(self.world)]
            dist.all_gather(sizes, n, group=self.ctrl)
            longest = max(int(s.item()) for s in sizes)
            padded = torch.zeros(longest, dtype=torch.uint8)
            padded[: buf.numel()] = buf
            out = [torch.empty_like(padded) for _ in range(self.world)]
            dist.all_gather(out, padded, group=self.ctrl)
            return [_from_bytes(b[: int(s.item())]) for b, s in zip(out, sizes, strict=True)]

        return list(self._run("gathering the ranks' RNG states", go))

    def bcast_state(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """Rank 0's training state (`Trainer.state()`), on every rank: one JSON header with
        the tensors' manifest, then their bytes in one buffer."""
        header = None
        parts: list[torch.Tensor] = []
        if self.rank == 0:
            assert tensors is not None and info is not None
            manifest = []
            for group, named in tensors.items():
                for name, t in named.items():
                    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                    parts.append(flat)
                    manifest.append([group, name, str(t.dtype), list(t.shape), flat.numel()])
            header = {"info": info, "groups": list(tensors), "manifest": manifest}
        header = self.bcast_json(header)
        total = sum(int(m[4]) for m in header["manifest"])
        if self.rank == 0:
            buf = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
        else:
            buf = torch.empty(total, dtype=torch.uint8)
        self._run("the state rank 0 sent", lambda: dist.broadcast(buf, 0, group=self.ctrl))
        out: dict[str, dict[str, torch.Tensor]] = {g: {} for g in header["groups"]}
        at = 0
        for group, name, dtype, shape, size in header["manifest"]:
            piece = buf[at : at + size].clone()  # its own storage: aligned for any dtype
            out.setdefault(group, {})[name] = piece.view(_dtype(dtype)).reshape(shape)
            at += size
        return out, dict(header["info"])

    # -- training: gradients and buffers on the trial's device ---------------------------------

    def reduce_grads(self, model: torch.nn.Module, value: float) -> float:
        """Sum every rank's (share-weighted) gradients and loss value; returns the summed value.
        A parameter without a gradient on every rank keeps none, as in a 1-process run."""
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise TaskError(
                    "a sparse gradient (an Embedding with sparse=True): trials.processes > 1 "
                    "sums dense gradients only; use sparse=False"
                )
        meta = torch.tensor(
            [value] + [0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float64
        )
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, p in enumerate(params):
            by_dtype.setdefault(p.dtype, []).append(i)

        def go() -> None:
            dist.all_reduce(meta, group=self.ctrl)
            for indices in by_dtype.values():
                flat = torch.cat([_grad(params[i]).reshape(-1) for i in indices])
                dist.all_reduce(flat)
                at = 0
                for i in indices:
                    p = params[i]
                    n = p.numel()
                    if meta[i + 1] > 0:
                        chunk = flat[at : at + n].view_as(p)
                        if p.grad is None:
                            p.grad = chunk.clone()
                        else:
                            p.grad.copy_(chunk)
                    at += n

        self._run("summing the gradients", go)
        return float(meta[0])

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers on every rank."""
        buffers = [b for b in model.buffers()]
        if not buffers:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in buffers:
            by_dtype.setdefault(b.dtype, []).append(b)

        def go() -> None:
            for group in by_dtype.values():
                flat = torch.cat([b.detach().reshape(-1) for b in group])
                dist.broadcast(flat, 0)
                if self.rank != 0:
                    at = 0
                    with torch.no_grad():
                        for b in group:
                            b.copy_(flat[at : at + b.numel()].view_as(b))
                            at += b.numel()

        self._run("sending rank 0's buffers", go)


class Gang:
    """A trainer's place among its trial's ranks (`Trainer.gang`): the loop calls it at the
    points where the ranks must agree."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.lockstep = False  # inside train(): every rank is in the same loop
        self.idle = True  # the followers wait for rank 0's next command (rank 0 knows)
        self.go = True  # a follower: rank 0's decision after its last evaluation

    @property
    def rank(self) -> int:
        return self.link.rank

    @property
    def world(self) -> int:
        return self.link.world

    def begin(
        self,
        trainer: Trainer,
        hooks: Hooks,
        until: Budget,
        eval_every: Every | None,
        checkpoint_every: Every | None,
    ) -> Hooks:
        """Start a train() call on every rank: rank 0 sends its state and the call's budget and
        intervals, which the followers start the same call from."""
        if self.rank == 0:
            check_processes(trainer, self.world)
            fresh = trainer.rank_rng is None
            if fresh:
                trainer.processes = self.world
                reseed(trainer.seed, 0)
            self.idle = False
            self.link.post(
                {"cmd": "train", "until": vars(until), "saved_step": trainer.saved_step,
                 "threads": torch.get_num_threads(),
                 "eval_every": vars(eval_every) if eval_every else None,
                 "checkpoint_every": vars(checkpoint_every) if checkpoint_every else None,
                 "rng": None if fresh else trainer.rank_rng}
            )  # fmt: skip
            tensors, info = trainer.state()
            self.link.bcast_state(tensors, info)
            hooks = Leader(self, hooks)
        trainer.stream.set_shard(self.rank, self.world)
        self.lockstep = True
        return hooks

    def end(self, trainer: Trainer) -> None:
        """A train() call ended on every rank: rank 0 keeps every rank's RNG for its next
        checkpoint (a stop's, or the next call's)."""
        self.gather_rng(trainer)
        self.lockstep = False
        self.idle = True

    def gather_rng(self, trainer: Trainer) -> None:
        states = self.link.gather_json(st.rng_state())
        if self.rank == 0:
            trainer.rank_rng = states
            trainer.processes = self.world

    def before_checkpoint(self, trainer: Trainer) -> None:
        if self.lockstep:  # a stop's checkpoint, after the loop, has them already
            self.gather_rng(trainer)
            if self.rank == 0:
                failpoints.passed("ranks.gathered")

    def metrics(self, trainer: Trainer) -> dict[str, float]:
        """An evaluation's metrics: rank 0 evaluates; a follower gets them (and whether to go
        on) once rank 0's hook has decided."""
        if self.rank == 0:
            return trainer.evaluate()
        said = self.link.bcast_json()
        self.go = bool(said["go"])
        return {str(k): float(v) for k, v in said["metrics"].items()}

    def backward(
        self, trainer: Trainer, group: list[tuple[list[int], Any]], n: int, step: int
    ) -> float:
        """This rank's backward pass over its share of one step's batches, then the gradients
        summed over the ranks. Returns the step's training loss (over the global batch)."""
        self.link.sync_buffers(trainer.model)
        value = 0.0
        for indices, batch in group:
            a, b = shard_bounds(len(indices), self.rank, self.world)
            if b == a:
                continue  # a short last batch left this rank no sample
            weight = (b - a) / n
            loss, v = trainer.loss_of(batch, step, check=False)
            value += v * weight
            loss = loss * weight
            (trainer.scaler.scale(loss) if trainer.scaler is not None else loss).backward()
        value = self.link.reduce_grads(trainer.model, value)
        if not math.isfinite(value):  # every rank sees the same sum: they stop together,
            self.lockstep, self.idle = False, True  # and the followers wait for the next call
            raise TrainingDiverged("the training loss", value, step)
        if self.rank:
            failpoints.passed("follower.step")
        return value


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def reseed(seed: int, rank: int) -> None:
    """A fresh run's RNGs on rank `rank`: its own stream, derived from the run's seed."""
    st.seed_everything(mix_seed(seed, rank, _RANK_SEED))


def check_processes(trainer: Trainer, world: int) -> None:
    """Refuse to continue a state trained by another number of ranks: its gradients would be
    summed in another order and its ranks' RNGs do not fit, so it would not be the same run."""
    if trainer.processes is None or trainer.processes == world:
        return
    raise CheckpointMismatch(
        f"this state was trained by {trainer.processes} process(es) per trial and this run "
        f"uses {world}: another number of ranks sums the gradients in another order and has "
        f"other RNG streams, so it would silently not continue the same run; run it with "
        f"trials.processes: {trainer.processes}"
    )


class Leader(Hooks):
    """Rank 0's hooks: the trial's own, and after each, rank 0's decision told to the ranks."""

    def __init__(self, gang: Gang, inner: Hooks) -> None:
        self.gang, self.inner = gang, inner

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self._decide(trainer, lambda: self.inner.on_step(trainer, indices, loss))

    def on_eval(self, trainer: Trainer, index: int, metrics: dict[str, float]) -> None:
        self._decide(trainer, lambda: self.inner.on_eval(trainer, index, metrics), metrics)

    def on_checkpoint(self, trainer: Trainer) -> None:
        self._decide(trainer, lambda: self.inner.on_checkpoint(trainer))

    def _decide(
        self, trainer: Trainer, hook: Callable[[], None], metrics: dict[str, float] | None = None
    ) -> None:
        link = self.gang.link
        try:
            hook()
        except BaseException:
            # the followers stop here too, and give their RNGs for the checkpoint a stop takes
            if metrics is None:
                link.bcast_code(0)
            else:
                link.bcast_json({"go": False, "metrics": metrics})
            self.gang.end(trainer)
            raise
        if metrics is None:
            link.bcast_code(1)
        else:
            link.bcast_json({"go": True, "metrics": metrics})


class Follower(Hooks):
    """A follower's hooks: each waits for rank 0's decision at the same point."""

    def __init__(self, gang: Gang) -> None:
        self.gang = gang

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self._obey(trainer, bool(self.gang.link.bcast_code()))

    def on_eval(self, trainer: Trainer, index: int, metrics: dict[str, float]) -> None:
        self._obey(trainer, self.gang.go)

    def on_checkpoint(self, trainer: Trainer) -> None:
        self._obey(trainer, bool(self.gang.link.bcast_code()))

    def _obey(self, trainer: Trainer, go: bool) -> None:
        if not go:
            self.gang.end(trainer)
            raise Dismissed
