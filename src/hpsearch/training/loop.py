"""The training loop. It knows nothing of Optuna or storage: it trains, and calls hooks.

A run's position is counted in samples and optimizer steps since the run's start; a *segment*
(the warm-up, or one trial after its fork) starts at an origin, and evaluation and checkpoint
boundaries are counted from that origin. Every boundary is a pure function of the counters, so a
resumed run evaluates and checkpoints at the very same steps as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch

from hpsearch.errors import CheckpointMismatch, TaskError, TrainingDiverged
from hpsearch.task import Task
from hpsearch.training import state as st
from hpsearch.training.data import DataStream, eval_loader
from hpsearch.training.progress import Budget, Every, Hooks, Progress
from hpsearch.training.schedule import Schedule

STATE_VERSION = 1
LR_SCALE = "hpsearch_lr_scale"  # param group key: the group's LR relative to hparams["lr"]


class Trainer:
    """Model, optimizer, scheduler, data position and RNG of one run, and the loop that trains it.

    Build one with `Trainer.create` (a fresh run) or `Trainer.restore` (from saved state); save
    it with `state()`; fork it with `hpsearch.training.fork.fork`.
    """

    def __init__(
        self,
        task: Task,
        hparams: dict[str, Any],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        stream: DataStream,
        val_set: Any,
        *,
        seed: int,
        device: torch.device,
        schedule: Schedule | None,
        total_samples: int | None,
        progress: Progress,
        history: list[dict[str, Any]],
        objective: str | None = None,
    ) -> None:
        _check_supported(optimizer, scheduler, objective)
        self.task = task
        self.hparams = hparams
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.stream = stream
        self.val_loader = eval_loader(
            val_set, getattr(task, "eval_batch_size", 256), task.collate, stream.num_workers,
            seed=seed,
        )  # fmt: skip
        self.seed = seed
        self.device = device
        self.schedule = schedule
        self.total_samples = total_samples
        self.progress = progress
        self.history = history
        self.objective = objective  # the metric a ReduceLROnPlateau scheduler watches
        self.saved_step: int | None = None  # step of the newest checkpoint of this trainer
        self._before = Progress(**vars(progress))

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        task: Task,
        hparams: Mapping[str, Any],
        *,
        seed: int,
        device: str | torch.device = "cpu",
        schedule: Schedule | None = None,
        total_samples: int | None = None,
        num_workers: int = 0,
        datasets: tuple[Any, Any] | None = None,
        objective: str | None = None,
    ) -> Trainer:
        """A fresh run: seed every RNG, then build the model, optimizer and scheduler.

        `objective` names the metric a task's `ReduceLROnPlateau` is stepped with, at each
        evaluation (every other scheduler steps once per optimizer step)."""
        torch.set_flush_denormal(True)  # denormals in Adam's moments make CPU steps 20x slower
        train_set, val_set = datasets if datasets is not None else task.datasets()
        hp = dict(hparams)
        dev = torch.device(device)
        st.seed_everything(seed)
        model = task.model(hp).to(dev)
        optimizer = task.optimizer(model, hp)
        scheduler = task.scheduler(optimizer, hp, _total_steps(total_samples, hp))
        if schedule is not None and scheduler is not None:
            raise ValueError(
                "the study sets a `schedule` and the task returns a scheduler: use one of them"
            )
        if schedule is not None:
            base = float(hp["lr"])
            for group in optimizer.param_groups:  # a group's own LR multiplier, kept by saves
                group[LR_SCALE] = group["lr"] / base if base else 1.0
        stream = DataStream(
            train_set,
            seed=seed,
            batch_size=int(hp["batch_size"]),
            collate=task.collate,
            num_workers=num_workers,
        )
        return cls(
            task, hp, model, optimizer, scheduler, stream, val_set,
            seed=seed, device=dev, schedule=schedule, total_samples=total_samples,
            progress=Progress(), history=[], objective=objective,
        )  # fmt: skip

    @classmethod
    def restore(
        cls,
        task: Task,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        state: Mapping[str, Any],
        *,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        datasets: tuple[Any, Any] | None = None,
    ) -> Trainer:
        """Rebuild a run from `state()` output. The model is built on the meta device and takes
        the loaded tensors as they are (no random init, no copy); RNG is restored last."""
        torch.set_flush_denormal(True)
        if state.get("version", 0) > STATE_VERSION:
            raise CheckpointMismatch(
                f"the checkpoint's training state has version {state['version']}, this hpsearch "
                f"reads up to {STATE_VERSION}: upgrade hpsearch"
            )
        train_set, val_set = datasets if datasets is not None else task.datasets()
        hp = dict(state["hparams"])
        dev = torch.device(device)
        model = _restored_model(task, hp, tensors, state, dev)
        optimizer = task.optimizer(model, hp)
        # the scheduler first: creating one rewrites the groups' LRs, which the load then restores
        total = state.get("total_samples")
        scheduler = task.scheduler(optimizer, hp, _total_steps(total, hp))
        opt_tensors = {k: v.to(dev) for k, v in tensors["optimizer"].items()}
        st.load_optimizer_state(optimizer, opt_tensors, state["optimizer"])
        if scheduler is not None:
            if state.get("scheduler") is None:
                raise CheckpointMismatch(
                    "the task returns a scheduler but the checkpoint holds no scheduler state"
                )
            scheduler.load_state_dict(st.from_json(state["scheduler"]))
        p = state["progress"]
        stream = DataStream(
            train_set,
            seed=state["seed"],
            batch_size=int(hp["batch_size"]),
            position=p["samples"],
            collate=task.collate,
            num_workers=num_workers,
        )
        sched = state.get("schedule")
        trainer = cls(
            task, hp, model, optimizer, scheduler, stream, val_set,
            seed=state["seed"], device=dev,
            schedule=Schedule(**sched) if sched else None, total_samples=total,
            progress=Progress(**p), history=copy.deepcopy(list(state.get("metrics", []))),
            objective=state.get("objective"),
        )  # fmt: skip
        st.set_rng_state(state["rng"])
        trainer.saved_step = trainer.progress.step
        return trainer

    def load(
        self, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]
    ) -> None:
        """Restore saved state into this trainer's existing objects by copying (the source stays
        untouched): the fast path for forking many trials from one base held in memory."""
        model_tensors = st.expand_aliases(tensors["model"], state.get("model_aliases"))
        st.check_model_keys(self.model, model_tensors)
        with torch.no_grad():
            for name, t in self.model.state_dict(keep_vars=True).items():
                t.copy_(model_tensors[name])
        st.copy_optimizer_state(self.optimizer, tensors["optimizer"], state["optimizer"])
        self.hparams = dict(state["hparams"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(st.from_json(state["scheduler"]))
        sched = state.get("schedule")
        self.schedule = Schedule(**sched) if sched else None
        self.total_samples = state.get("total_samples")
        self.progress = Progress(**state["progress"])
        self.history = copy.deepcopy(list(state.get("metrics", [])))
        self.objective = state.get("objective", self.objective)
        self.seed = state["seed"]
        self.stream.seed = self.seed
        self.stream.set_batch_size(int(self.hparams["batch_size"]))
        self.stream.seek(self.progress.samples)
        st.set_rng_state(state["rng"])
        self.saved_step = self.progress.step

    # -- saving ------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """The full training state: live tensors (copy them before training on) and JSON."""
        opt_tensors, opt_meta = st.optimizer_state(self.optimizer)
        model_tensors, aliases = st.model_state(self.model)
        p = self.progress
        info = {
            "version": STATE_VERSION,
            "hpsearch": _version(),
            "torch": torch.__version__,
            "progress": vars(p).copy(),
            "epoch": p.samples / self.stream.n,
            "seed": self.seed,
            "hparams": st.to_json(self.hparams, "hparams"),
            "schedule": vars(self.schedule).copy() if self.schedule else None,
            "total_samples": self.total_samples,
            "optimizer": opt_meta,
            "scheduler": (
                st.to_json(self.scheduler.state_dict(), "scheduler state")
                if self.scheduler is not None
                else None
            ),
            "rng": st.rng_state(),
            "metrics": copy.deepcopy(self.history),
            "objective": self.objective,
            "model_aliases": aliases,
        }
        return {"model": model_tensors, "optimizer": opt_tensors}, info

    # -- training ----------------------------------------------------------------------------

    def begin_segment(self) -> None:
        """Start counting a new segment (a trial after its fork) from the current position."""
        self.progress.origin_step = self.progress.step
        self.progress.origin_samples = self.progress.samples

    @property
    def epoch(self) -> float:
        return self.progress.samples / self.stream.n

    def train(
        self,
        until: Budget,
        *,
        hooks: Hooks | None = None,
        eval_every: Every | None = None,
        checkpoint_every: Every | None = None,
    ) -> dict[str, float]:
        """Train until the budget; evaluate at the end of the segment; checkpoint it. Returns the
        final metrics. A trainer restored mid-segment continues exactly where it left off."""
        hooks = hooks or Hooks()
        p = self.progress
        if eval_every is not None and self._eval_pending(eval_every):
            # saved right after a step that crossed an evaluation boundary, before it was
            # evaluated (a Ctrl-C checkpoints between the two): evaluate now, as the run would
            self._eval(hooks, eval_every.index(p))
        while not until.reached(p):
            self.step(hooks)
            if eval_every is not None and _crossed(eval_every, p, self._before):
                self._eval(hooks, eval_every.index(p))
            if checkpoint_every is not None and _crossed(checkpoint_every, p, self._before):
                self.checkpoint(hooks)
        if not self.history or self.history[-1]["step"] != p.step:
            index = eval_every.index(p) + 1 if eval_every is not None else 0
            self._eval(hooks, index)
        if self.saved_step != p.step:
            self.checkpoint(hooks)
        return {k: v for k, v in self.history[-1].items() if k not in _BOOKKEEPING}

    def _eval_pending(self, eval_every: Every) -> bool:
        p = self.progress
        if self.history and self.history[-1]["step"] == p.step:
            return False
        done = [h["index"] for h in self.history if h["samples"] > p.origin_samples]
        return eval_every.index(p) > max(done, default=0)

    def step(self, hooks: Hooks) -> float:
        """One optimizer step on the next batch."""
        p = self.progress
        self._before = Progress(**vars(p))
        indices, batch = self.stream.next_batch()
        if self.schedule is not None:
            frac = p.samples / self.total_samples if self.total_samples else 0.0
            lr = float(self.hparams["lr"]) * self.schedule.factor(frac)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get(LR_SCALE, 1.0)
        self.model.train()
        loss = self.task.loss(self.model, _to_device(batch, self.device))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            what = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TaskError(
                f"{type(self.task).__name__}.loss must return a scalar tensor, got {what}: "
                "reduce it (e.g. .mean()) before returning"
            )
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged("the training loss", value, p.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None and not _is_plateau(self.scheduler):
            self.scheduler.step()
        p.step += 1
        p.samples += len(indices)
        hooks.on_step(self, indices, value)
        return value

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            metrics = self.task.evaluate(self.model, self.val_loader)
        self.model.train()
        out = {}
        for k, v in dict(metrics).items():
            fv = float(v)
            if not math.isfinite(fv):
                raise TrainingDiverged(f"the metric {k!r}", fv, self.progress.step)
            out[str(k)] = fv
        return out

    def checkpoint(self, hooks: Hooks) -> None:
        hooks.on_checkpoint(self)
        self.saved_step = self.progress.step

    def _eval(self, hooks: Hooks, index: int) -> None:
        metrics = self.evaluate()
        p = self.progress
        self.history.append(
            {"step": p.step, "samples": p.samples, "segment_samples": p.samples - p.origin_samples,
             "index": index, **metrics}
        )  # fmt: skip
        if self.scheduler is not None and _is_plateau(self.scheduler):
            self.scheduler.step(metrics[self.objective])  # type: ignore[index]
        hooks.on_eval(self, index, metrics)


_BOOKKEEPING = ("step", "samples", "segment_samples", "index")


def _restored_model(
    task: Task,
    hp: dict[str, Any],
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
    dev: torch.device,
) -> torch.nn.Module:
    """The task's model built on the meta device, taking the loaded tensors as they are."""
    with torch.device("meta"):
        model = task.model(hp)
    model_tensors = st.expand_aliases(tensors["model"], state.get("model_aliases"))
    if dev.type == "cpu":
        st.load_model_state(model, model_tensors, assign=True)
    else:
        st.load_model_state(
            model, {k: v.to(dev, non_blocking=True) for k, v in model_tensors.items()},
            assign=True,
        )  # fmt: skip
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        # non-persistent buffers are not saved: build normally, then copy the weights in
        model = task.model(hp).to(dev)
        st.load_model_state(model, model_tensors)
    return model.to(dev)


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _check_supported(optimizer: Any, scheduler: Any, objective: str | None) -> None:
    """Refuse, with the reason and what to do instead, what the loop cannot run exactly."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TaskError(
            "torch.optim.LBFGS is not supported: its step() needs a closure that re-evaluates "
            "the loss several times per step, and hpsearch's loop computes one loss per batch. "
            "Use a first-order optimizer (SGD, Adam, ...)"
        )
    if _is_plateau(scheduler) and objective is None:
        raise TaskError(
            "ReduceLROnPlateau is stepped with a metric at each evaluation, but this run has no "
            "objective metric to give it (pass objective= to Trainer.create)"
        )


def _crossed(every: Every, now: Progress, before: Progress) -> bool:
    return every.index(now) > every.index(before)


def _total_steps(total_samples: int | None, hparams: Mapping[str, Any]) -> int:
    if not total_samples:
        return 0
    return -(-int(total_samples) // int(hparams["batch_size"]))


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _version() -> str:
    from hpsearch import __version__

    return __version__
