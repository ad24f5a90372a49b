"""Turning checkpoints into the trainer a job runs on.

One trainer object is reused across the trials of a worker: copying a checkpoint's state into it
is far cheaper than building the task's model and optimizer again. One parent checkpoint (the
base, in fork-from-base) is held in memory, hash-checked once, so that a fork from it reads no file.
A checkpoint must pass its hashes *and* fit the task (`check_fits`) before anything trains on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hpsearch.checkpoint import LoadedCheckpoint
from hpsearch.checkpoint.format import check_id
from hpsearch.errors import CheckpointCorrupt, CheckpointError, CheckpointMismatch
from hpsearch.search.context import RunContext
from hpsearch.search.control import Interrupted
from hpsearch.training import Schedule, Trainer
from hpsearch.training import state as training_state
from hpsearch.training.fork import rebuild_model
from hpsearch.training.loop import STATE_VERSION

# what a failed restore may not swallow: the user's stop, and the interpreter's
PASS_THROUGH = (KeyboardInterrupt, SystemExit, Interrupted)
# what makes a checkpoint unusable, so that its trial falls back to the one before: the store's
# errors (missing, torn, corrupt, forged, a newer format, unreadable) and `check_fits`' (it does
# not fit the task). Anything else raised while restoring is the task's error or a bug, and is
# reported as that: never turned into a fallback that hides it
UNUSABLE = (CheckpointError,)


class Restorer:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.trainer: Trainer | None = None
        self.held_id: str | None = None
        self.held: LoadedCheckpoint | None = None

    # -- checkpoints ------------------------------------------------------------------------

    def load(self, ckpt_id: str) -> LoadedCheckpoint:
        """Read a checkpoint (hashes checked by the store) and check that it fits the task."""
        try:
            check_id(ckpt_id)
        except ValueError as exc:  # a damaged record names it: nothing to read
            raise CheckpointCorrupt(str(exc)) from None
        loaded = self.ctx.session.store.load(ckpt_id)
        self.check_fits(loaded)
        return loaded

    def hold(self, ckpt_id: str) -> None:
        """Keep a checkpoint in memory for the forks to come; restore it once now, so that a
        restore that fails shows here and not in the first trial."""
        try:
            loaded = self.load(ckpt_id)
            self.held_id, self.held = ckpt_id, loaded
            self.from_checkpoint(ckpt_id)
        except BaseException:
            self.forget()
            self.held_id = self.held = None
            raise

    def from_checkpoint(self, ckpt_id: str) -> Trainer:
        """The trainer, holding that checkpoint's state."""
        if ckpt_id == self.held_id and self.held is not None:
            if self.trainer is not None:
                return self._copy_into(self.trainer, self.held)
            tensors = {
                g: {k: v.clone() for k, v in d.items()} for g, d in self.held.tensors.items()
            }
            self.trainer = self._restore(tensors, self.held.state)
            return self.trainer
        loaded = self.load(ckpt_id)
        if self.trainer is not None:
            return self._copy_into(self.trainer, loaded)
        self.trainer = self._restore(loaded.tensors, loaded.state)
        return self.trainer

    def scratch(self, hparams: Mapping[str, Any], *, total_samples: int) -> Trainer:
        """A new trainer from the task, seeded by the study."""
        s = self.ctx.settings
        sched = s.schedule
        self.trainer = Trainer.create(
            self.ctx.session.task(), dict(hparams), seed=s.seed, device=s.device,
            schedule=Schedule.of(sched),
            total_samples=total_samples, num_workers=s.data.num_workers,
            datasets=self.ctx.session.datasets(), objective=self.ctx.metric,
            training=s.training,
        )  # fmt: skip
        return self.trainer

    def forget(self) -> None:
        """Drop the reused trainer: its state is suspect (a failed step, a half-done copy)."""
        self.trainer = None

    def _copy_into(self, trainer: Trainer, loaded: LoadedCheckpoint) -> Trainer:
        # The model the trainer holds was built for an earlier node: what it keeps outside its
        # tensors (dropouts, an attention's float, a loss built in Task.model) is that node's.
        # Build it again for the checkpoint's hparams first, as a fresh restore would, then copy
        # the state in (the task's own state last, over whatever Task.model reset).
        rebuild_model(trainer, loaded.state["hparams"])
        trainer.load(loaded.tensors, loaded.state)
        return trainer

    def _restore(self, tensors: Any, state: Mapping[str, Any]) -> Trainer:
        s = self.ctx.settings
        return Trainer.restore(
            self.ctx.session.task(), tensors, state, device=s.device,
            num_workers=s.data.num_workers, datasets=self.ctx.session.datasets(),
        )  # fmt: skip

    # -- fitness ----------------------------------------------------------------------------

    def check_fits(self, loaded: LoadedCheckpoint) -> None:
        """What a checkpoint that passed its hashes must still satisfy before anything trains
        on it: a state version this hpsearch reads, weights of the names, shapes and dtypes
        the task's model has, optimizer param groups of the types the task's optimizer uses,
        and finite values (a non-finite weight in a checkpoint is damage, not divergence)."""
        state = loaded.state
        version = state.get("version", 0)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise CheckpointMismatch(
                f"training state version {version!r}; this hpsearch reads up to {STATE_VERSION}"
            )
        check_state(state)
        have = len(state["ranks"]["rng"]) if state.get("ranks") else 1
        want = self.ctx.settings.trials.processes
        if have != want:
            raise CheckpointMismatch(
                f"trained by {have} process(es) per trial, and the study runs {want} "
                "(trials.processes): another number of ranks would not continue the same run"
            )
        hp = state["hparams"]
        weights = training_state.expand_aliases(loaded.tensors["model"], state.get("model_aliases"))
        if self.trainer is not None:
            # compare with the live trainer: calling the task's model() and optimizer() again
            # would replace what a task keeps of them (its optimizer, say) by meta copies
            try:
                training_state.check_model_keys(self.trainer.model, weights)
                check_groups(state["optimizer"], self.trainer.optimizer)
                return self._check_finite(loaded)
            except CheckpointMismatch:
                # a model of another build (a tree's nodes inherit the hidden size their root
                # sampled): the live trainer cannot take it; check against the checkpoint's own
                # build below, and the restore that follows builds that trainer anew
                self.forget()
        task = self.ctx.session.task()
        with torch.device("meta"):
            model = task.model(dict(hp))
        optimizer = task.optimizer(model, dict(hp))
        training_state.check_model_keys(model, weights)  # names, shapes and dtypes
        check_groups(state["optimizer"], optimizer)
        self._check_finite(loaded)

    def _check_finite(self, loaded: LoadedCheckpoint) -> None:
        for group, tensors in loaded.tensors.items():
            for k, t in tensors.items():
                # the sum is finite only if every element is (NaN and inf propagate), and it
                # costs a fifth of isfinite(); only a sum that overflowed needs the exact check
                if (
                    t.is_floating_point()
                    and not bool(torch.isfinite(t.sum()))
                    and not bool(torch.isfinite(t).all())
                ):
                    raise CheckpointCorrupt(f"{group} tensor {k} holds non-finite values")


def why(exc: BaseException) -> str:
    """One line on why a checkpoint cannot be used."""
    if isinstance(exc, MemoryError):
        return "corrupt: reading it ran out of memory"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if isinstance(value, torch.Tensor) or (isinstance(value, dict) and "__tensor__" in value):
        return "tensor"
    return type(value).__name__


def check_groups(meta: Any, optimizer: torch.optim.Optimizer) -> None:
    """The checkpoint's optimizer param groups against those the task's optimizer builds: the
    same count, parameter counts, and for every setting a value of the same kind (a string
    learning rate would only fail later, in the middle of a trial)."""
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    fresh = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointMismatch("the optimizer's param groups are not a list of mappings")
    if len(groups) != len(fresh):
        raise CheckpointMismatch(
            f"{len(groups)} optimizer param groups, the task's optimizer has {len(fresh)}"
        )
    for i, (saved, now) in enumerate(zip(groups, fresh, strict=True)):
        params = saved.get("params")
        if not isinstance(params, list) or len(params) != len(now["params"]):
            raise CheckpointMismatch(f"optimizer param group {i}: its parameter list does not fit")
        for key, value in now.items():
            if key == "params" or value is None:
                continue
            if key not in saved:
                raise CheckpointMismatch(f"optimizer param group {i} lacks {key!r}")
            if saved[key] is not None and _kind(saved[key]) != _kind(value):
                raise CheckpointMismatch(
                    f"optimizer param group {i}: {key} is a {_kind(saved[key])}, the task's "
                    f"optimizer uses a {_kind(value)}"
                )


# what a restore reads of a checkpoint's state.json, and the JSON type each must have: a state
# that lacks one or holds another type is unfit (checked here, so that what fails later is the
# task's error or a bug, not the checkpoint's)
_STATE_SHAPE: dict[str, type | tuple[type, ...]] = {
    "hparams": dict, "optimizer": dict, "progress": dict, "rng": dict, "seed": int,
    "metrics": list,
}  # fmt: skip
_PROGRESS = ("step", "samples", "origin_step", "origin_samples")


def check_state(state: Mapping[str, Any]) -> None:
    """The parts of a training state a restore reads have the shape it reads them in."""
    for key, kind in _STATE_SHAPE.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointCorrupt(f"state.json: {key} is {type(value).__name__}, not a {kind}")
    progress = state["progress"]
    if set(progress) != set(_PROGRESS) or not all(
        isinstance(progress[k], int) and progress[k] >= 0 for k in _PROGRESS
    ):
        raise CheckpointCorrupt(f"state.json: progress {str(progress)[:200]} is not {_PROGRESS}")
    if not isinstance(state["optimizer"].get("param_groups"), list):
        raise CheckpointCorrupt("state.json: the optimizer state has no param_groups list")
    if not {"python", "numpy", "torch"} <= set(state["rng"]):
        raise CheckpointCorrupt("state.json: the RNG state lacks python, numpy or torch")
    ranks = state.get("ranks")
    if ranks is not None:
        rng = ranks.get("rng") if isinstance(ranks, dict) else None
        if not (
            isinstance(rng, list)
            and len(rng) >= 2
            and all(isinstance(r, dict) and {"python", "numpy", "torch"} <= set(r) for r in rng)
        ):
            raise CheckpointCorrupt("state.json: ranks.rng is not every rank's RNG state")
    schedule = state.get("schedule")
    if schedule is not None and not isinstance(schedule, dict):
        raise CheckpointCorrupt("state.json: schedule is not a mapping")
