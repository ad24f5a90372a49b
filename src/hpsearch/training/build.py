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
