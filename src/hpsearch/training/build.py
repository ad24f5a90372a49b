"""Building a trainer's parts: the model restored from saved tensors, the check of what the loop
can run exactly, and batches moved to the run's device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hpsearch.errors import TaskError
from hpsearch.task import Task
from hpsearch.training import state as st


def restored_model(
    task: Task,
    hp: dict[str, Any],
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
    dev: torch.device,
) -> torch.nn.Module:
    """The task's model built on the meta device, taking the loaded tensors as they are. A model
    that holds tensors its state dict does not (non-persistent buffers, torchmetrics states,
    tensors kept as attributes) is built for real instead: those get the values its own
    construction gives them, which a meta build cannot (the task's state restores what of
    them a run changes)."""
    with torch.device("meta"):
        model = task.model(hp)
    model_tensors = st.expand_aliases(tensors["model"], state.get("model_aliases"))
    if dev.type != "cpu":
        model_tensors = {k: v.to(dev, non_blocking=True) for k, v in model_tensors.items()}
    st.load_model_state(model, model_tensors, assign=True)
    if holds_meta(model):
        model = task.model(hp).to(dev)
        st.load_model_state(model, model_tensors, assign=True)
    return model.to(dev)


def holds_meta(model: torch.nn.Module) -> bool:
    """Whether a tensor of `model` is still on the meta device: a parameter or buffer, or a
    tensor in a module's attributes (directly, or in a dict, list or tuple there)."""
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return True
    return any(_meta_in(v, 2) for m in model.modules() for v in vars(m).values())


def _meta_in(value: Any, depth: int) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_meta
    if depth == 0:
        return False
    if isinstance(value, dict):
        return any(_meta_in(v, depth - 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_meta_in(v, depth - 1) for v in value)
    return False


def inexact_on_cudnn(model: torch.nn.Module) -> list[str]:
    """The modules of `model` whose training no checkpoint can resume exactly on cuDNN: RNNs
    with dropout between stacked layers draw their masks from cuDNN's own dropout state, which
    is no part of torch's RNG (measured: benchmarks/RESULTS.md, "GPU")."""
    if not torch.backends.cudnn.enabled:
        return []
    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.RNNBase) and m.dropout > 0 and m.num_layers > 1
        and any(p.is_cuda for p in m.parameters())
    ]  # fmt: skip


def is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def check_supported(optimizer: Any, scheduler: Any, objective: str | None) -> None:
    """Refuse, with the reason and what to do instead, what the loop cannot run exactly."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TaskError(
            "torch.optim.LBFGS is not supported: its step() needs a closure that re-evaluates "
            "the loss several times per step, and hpsearch's loop computes one loss per batch. "
            "Use a first-order optimizer (SGD, Adam, ...)"
        )
    if is_plateau(scheduler) and objective is None:
        raise TaskError(
            "ReduceLROnPlateau is stepped with a metric at each evaluation, but this run has no "
            "objective metric to give it (pass objective= to Trainer.create)"
        )


class OnDevice:
    """A loader whose batches arrive on `device`, as training batches do: a task's `evaluate`
    iterates it like the loader it wraps and need not move what it gets (on the CPU the loader
    is used as it is)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Any:
        return (to_device(batch, self.device) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size, ... as the loader has them
        return getattr(self.loader, name)


def to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
