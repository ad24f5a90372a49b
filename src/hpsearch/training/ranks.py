"""One trial trained by N processes (ranks) in lockstep: data parallelism that stays exact.

Rank 0 is the process that runs the trial: it alone talks to Optuna, the lineage and the store.
Ranks 1..N-1 are *followers* (`hpsearch.training.follower`), started by a `Team`, which a
worker keeps from trial to trial. The collectives are `hpsearch.training.collectives.Link`.
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
on the CPU; gradients through the trial's backend (NCCL on `cuda`). Nothing is pickled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from hpsearch import failpoints
from hpsearch.errors import CheckpointMismatch, TrainingDiverged
from hpsearch.training import state as st
from hpsearch.training.collectives import Link
from hpsearch.training.data import mix_seed
from hpsearch.training.progress import Budget, Every, Hooks

if TYPE_CHECKING:
    from hpsearch.training.loop import Trainer

_RANK_SEED = 7  # mixed into a fresh run's seed with the rank: each rank's own RNG stream


class Dismissed(Exception):
    """A follower's training stops because rank 0's did (a prune, a stop, a lost trial)."""


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [a, b) of a batch of `total` samples: the first
    `total % world` ranks take one sample more (a short last batch of an epoch may leave a
    rank none)."""
    q, r = divmod(total, world)
    a = rank * q + min(rank, r)
    return a, a + q + (1 if rank < r else 0)


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
