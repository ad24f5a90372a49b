"""The training loop. It knows nothing of Optuna or storage: it trains, and calls hooks.

A run's position is counted in samples and optimizer steps since the run's start; a *segment*
(the warm-up, or one trial after its fork) starts at an origin, and evaluation and checkpoint
boundaries are counted from that origin. Every boundary is a pure function of the counters, so a
resumed run evaluates and checkpoints at the very same steps as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from hpsearch.config import TrainingSettings
from hpsearch.errors import TaskError, TrainingDiverged
from hpsearch.task import Task
from hpsearch.training import construct
from hpsearch.training import hatches as hx
from hpsearch.training import state as st
from hpsearch.training.build import (
    OnDevice,
    check_supported,
    is_plateau,
    to_device,
)
from hpsearch.training.construct import LR_SCALE, STATE_VERSION, ranks_of
from hpsearch.training.data import DataStream, eval_loader
from hpsearch.training.progress import Budget, Every, Hooks, Progress
from hpsearch.training.ranks import Gang, check_processes
from hpsearch.training.schedule import Schedule


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
        training: TrainingSettings | None = None,
        scaler_state: Mapping[str, Any] | None = None,
    ) -> None:
        check_supported(optimizer, scheduler, objective)
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
        self.training = training or hx.PLAIN  # the escape hatches; PLAIN: the plain loop
        self.scaler = hx.make_scaler(device, self.training, scaler_state)
        # a trial of several processes (hpsearch.training.ranks): this trainer's place among its
        # ranks while it trains with them, how many ranks trained its state (None: a fresh run,
        # no rank has yet), and every rank's RNG state as of the last time the ranks agreed
        self.gang: Gang | None = None
        self.processes: int | None = None
        self.rank_rng: list[dict[str, Any]] | None = None

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
        training: TrainingSettings | None = None,
    ) -> Trainer:
        """A fresh run: seed every RNG, then build the model, optimizer and scheduler.

        `objective` names the metric a task's `ReduceLROnPlateau` is stepped with, at each
        evaluation (every other scheduler steps once per optimizer step). `training` holds the
        escape hatches (clipping, accumulation, precision); they are saved with the run."""
        return cls(**construct.fresh(
            task, hparams, seed=seed, device=device, schedule=schedule,
            total_samples=total_samples, num_workers=num_workers, datasets=datasets,
            objective=objective, training=training,
        ))  # fmt: skip

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
        kwargs = construct.restored(
            task, tensors, state, device=device, num_workers=num_workers, datasets=datasets
        )
        trainer = cls(**kwargs)
        construct.finish_restore(trainer, tensors, state)
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
        self.training = hx.settings_from_json(state.get("training"))
        self.scaler = hx.make_scaler(self.device, self.training, state.get("scaler"))
        hx.load_task_state(
            self.task, tensors.get("task", {}), state.get("task_state"), self.device, copy=True
        )
        st.set_rng_state(state["rng"])
        self.saved_step = self.progress.step
        self.processes, self.rank_rng = ranks_of(state)

    # -- saving ------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """The full training state: live tensors (copy them before training on) and JSON."""
        opt_tensors, opt_meta = st.optimizer_state(self.optimizer)
        model_tensors, aliases = st.model_state(self.model)
        p = self.progress
        task_tensors, task_state = (
            hx.flatten(self.task.state_dict()) if hx.has_task_state(self.task) else ({}, None)
        )
        hatched = self.training != hx.PLAIN or task_state is not None
        ranked = self.rank_rng is not None and len(self.rank_rng) > 1
        info = {
            # a plain run's checkpoint stays readable by the hpsearch before the hatches; one
            # that uses them (or several ranks) is refused there rather than trained on without
            "version": STATE_VERSION if ranked else 2 if hatched else 1,
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
            "training": dataclasses.asdict(self.training),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "task_state": task_state,
        }
        if ranked:  # every rank's RNG; the model and optimizer are the same on every rank
            info["ranks"] = {"processes": len(self.rank_rng), "rng": self.rank_rng}  # type: ignore[arg-type]
        tensors = {"model": model_tensors, "optimizer": opt_tensors}
        if task_state is not None:
            tensors["task"] = task_tensors
        return tensors, info

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
        final metrics. A trainer restored mid-segment continues exactly where it left off. With
        a `gang`, every rank of the trial runs this call in lockstep."""
        hooks = hooks or Hooks()
        if self.gang is None:
            check_processes(self, 1)
            self.processes = 1  # trained by one: no team may take it over as a fresh run
            return self._train(until, hooks, eval_every, checkpoint_every)
        hooks = self.gang.begin(self, hooks, until, eval_every, checkpoint_every)
        try:
            metrics = self._train(until, hooks, eval_every, checkpoint_every)
        except BaseException:
            self.gang.lockstep = False
            raise
        self.gang.end(self)
        return metrics

    def _train(
        self, until: Budget, hooks: Hooks, eval_every: Every | None, checkpoint_every: Every | None
    ) -> dict[str, float]:
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
        """One optimizer step: on the next batch, or on the next group of micro-batches when
        gradients are accumulated. Returns the (group's mean) training loss."""
        p = self.progress
        self._before = Progress(**vars(p))
        k = hx.micro_batches(self.training, self.stream.batch_size)
        group = [self.stream.next_batch() for _ in range(k)]
        if self.schedule is not None:
            frac = p.samples / self.total_samples if self.total_samples else 0.0
            lr = float(self.hparams["lr"]) * self.schedule.factor(frac)
            for g in self.optimizer.param_groups:
                g["lr"] = lr * g.get(LR_SCALE, 1.0)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = sum(len(indices) for indices, _ in group)
        value = 0.0
        mine = group
        if self.gang is not None:  # this rank's share of the batch, gradients summed over ranks
            value = self.gang.backward(self, group, n, p.step + 1)
            mine = []
        for indices, batch in mine:
            loss, v = self.loss_of(batch, p.step + 1)
            if k > 1:  # each micro-batch's share of the group's mean loss
                weight = len(indices) / n
                value += v * weight
                loss = loss * weight
            else:
                value = v
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        hx.optimizer_step(self.optimizer, self.scaler, self.training)
        if self.scheduler is not None and not is_plateau(self.scheduler):
            self.scheduler.step()
        p.step += 1
        p.samples += n
        indices = group[0][0] if k == 1 else [i for ix, _ in group for i in ix]
        hooks.on_step(self, indices, value)
        return value

    def loss_of(self, batch: Any, step: int, *, check: bool = True) -> tuple[torch.Tensor, float]:
        """The task's loss of one (micro-)batch, under the run's autocast, and its value,
        checked finite (unless `check` is False: ranks check the sum over all of them)."""
        step_fn = getattr(self.task, "training_step", None)
        with hx.autocast(self.device, self.training):
            if step_fn is not None:
                loss = step_fn(self.model, to_device(batch, self.device), self.hparams)
            else:  # a task object that is not a subclass of hpsearch.Task
                loss = self.task.loss(self.model, to_device(batch, self.device))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            what = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            from hpsearch.config.taskload import overrides

            name = "training_step" if overrides(type(self.task), "training_step") else "loss"
            raise TaskError(
                f"{type(self.task).__name__}.{name} must return a scalar tensor, got {what}: "
                "reduce it (e.g. .mean()) before returning"
            )
        value = float(loss.detach())
        if check and not math.isfinite(value):
            raise TrainingDiverged("the training loss", value, step)
        return loss, value

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        loader: Any = self.val_loader
        if self.device.type != "cpu":  # the task's evaluate gets batches where the model is
            loader = OnDevice(loader, self.device)
        with torch.no_grad(), hx.autocast(self.device, self.training):
            metrics = self.task.evaluate(self.model, loader)
        self.model.train()
        out = {}
        for k, v in dict(metrics).items():
            fv = float(v)
            if not math.isfinite(fv):
                raise TrainingDiverged(f"the metric {k!r}", fv, self.progress.step)
            out[str(k)] = fv
        return out

    def checkpoint(self, hooks: Hooks) -> None:
        if self.gang is not None:
            self.gang.before_checkpoint(self)
        hooks.on_checkpoint(self)
        self.saved_step = self.progress.step

    def _eval(self, hooks: Hooks, index: int) -> None:
        metrics = self.evaluate() if self.gang is None else self.gang.metrics(self)
        p = self.progress
        self.history.append(
            {"step": p.step, "samples": p.samples, "segment_samples": p.samples - p.origin_samples,
             "index": index, **metrics}
        )  # fmt: skip
        if self.scheduler is not None and is_plateau(self.scheduler):
            self.scheduler.step(metrics[self.objective])  # type: ignore[index]
        hooks.on_eval(self, index, metrics)


_BOOKKEEPING = ("step", "samples", "segment_samples", "index")


def _crossed(every: Every, now: Progress, before: Progress) -> bool:
    return every.index(now) > every.index(before)


def _version() -> str:
    from hpsearch import __version__

    return __version__
