"""The loop's escape hatches: gradient clipping and accumulation, mixed precision, and the state a
task keeps outside its model and optimizer.

Accumulation is counted in samples (`TrainingSettings.accumulate_samples`): one optimizer step
takes `accumulate_samples // batch_size` micro-batches, so a fork that changes the batch size
keeps the effective batch. A step, micro-batches and all, is one unit of the loop: checkpoints,
evaluations and a Ctrl-C fall between steps, never inside a group, so the data position saved is
always at a group's end and no partial gradient needs saving. A run killed inside a group resumes
from its last checkpoint and takes that group again, the same micro-batches in the same order.

`precision: bf16 | fp16` runs the task's forward passes (training and evaluation) under
`torch.autocast` on the run's device; the weights and the optimizer stay in float32. fp16 adds a
`torch.amp.GradScaler` for the device (CUDA, and on the CPU too, where torch has one), whose
state is saved with the run as JSON.

A task's own state (`Task.state_dict`) is saved as the tensor group "task" plus JSON, where each
tensor's place is `{"__tensor__": name}`; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from hpsearch.config import TrainingSettings
from hpsearch.errors import CheckpointMismatch, ForkError, TaskError

__all__ = [
    "PLAIN",
    "autocast",
    "check_batch_size",
    "clip_gradients",
    "flatten",
    "has_task_state",
    "make_scaler",
    "micro_batches",
    "optimizer_step",
    "settings_from_json",
    "unflatten",
]

PLAIN = TrainingSettings()
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def settings_from_json(saved: Mapping[str, Any] | None) -> TrainingSettings:
    """The settings a checkpoint was trained with (a checkpoint made before them: the plain
    loop)."""
    if not saved:
        return PLAIN
    known = {f.name for f in dataclasses.fields(TrainingSettings)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise CheckpointMismatch(
            f"the checkpoint's training settings hold {', '.join(unknown)}, which this hpsearch "
            "does not know: upgrade hpsearch"
        )
    return TrainingSettings(**saved)


def micro_batches(training: TrainingSettings, batch_size: int) -> int:
    """Micro-batches per optimizer step."""
    if training.accumulate_samples is None:
        return 1
    check_batch_size(training, batch_size)
    return training.accumulate_samples // batch_size


def check_batch_size(training: TrainingSettings, batch_size: int) -> None:
    """Raise ForkError when `batch_size` does not divide the samples per optimizer step."""
    acc = training.accumulate_samples
    if acc is not None and acc % batch_size:
        divisors = [d for d in range(1, min(acc, 4096) + 1) if acc % d == 0][-4:]
        raise ForkError(
            f"batch_size {batch_size} does not divide training.accumulate_samples ({acc}): an "
            f"optimizer step must take whole micro-batches; fork to a batch size that divides "
            f"it (e.g. one of {', '.join(map(str, divisors))})"
        )


def autocast(device: torch.device, training: TrainingSettings) -> Any:
    """The context the forward pass runs in: autocast to bf16/fp16, or nothing for fp32."""
    if training.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[training.precision])


def make_scaler(
    device: torch.device, training: TrainingSettings, saved: Mapping[str, Any] | None
) -> torch.amp.GradScaler | None:
    """fp16's GradScaler on the run's device, with the state it was saved with."""
    if training.precision != "fp16":
        return None
    scaler = torch.amp.GradScaler(device.type)
    if saved:
        scaler.load_state_dict(dict(saved))
    return scaler


def clip_gradients(optimizer: torch.optim.Optimizer, training: TrainingSettings) -> None:
    """Clip the gradients of every parameter the optimizer steps (already unscaled)."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if training.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, training.clip_norm)
    elif training.clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, training.clip_value)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    training: TrainingSettings,
) -> None:
    """Clip (if set) and step; with fp16's scaler, unscale first so that the true gradients are
    clipped, and let the scaler skip a step whose scaled gradients overflowed."""
    clip = training.clip_norm is not None or training.clip_value is not None
    if scaler is None:
        if clip:
            clip_gradients(optimizer, training)
        optimizer.step()
        return
    if clip:
        scaler.unscale_(optimizer)
        clip_gradients(optimizer, training)
    scaler.step(optimizer)
    scaler.update()


# ---------------------------------------------------------------------------------------------
# the task's own state


def has_task_state(task: Any) -> bool:
    """Whether the task keeps state of its own (overrides `Task.state_dict`)."""
    from hpsearch.config.taskload import overrides

    return overrides(type(task), "state_dict")


def flatten(value: Any, what: str = "task state") -> tuple[dict[str, torch.Tensor], Any]:
    """A nested dict/list of tensors and JSON values as (tensors by dotted path, JSON with each
    tensor's place marked `{"__tensor__": path}`). Keys may hold dots (parameter names do):
    the JSON keeps the structure, and only two tensors of one path are refused. A dict of the
    user's shaped like a marker is saved wrapped (`state.plain_dict`), never confused with one.
    A tensor that cannot be saved (sparse, meta, nested) and nesting deeper than
    `state.MAX_DEPTH` are refused as the task's mistake, naming the path."""
    from hpsearch.training.state import MAX_DEPTH, plain_dict, tensor_ref, to_json

    tensors: dict[str, torch.Tensor] = {}

    def walk(v: Any, path: str, depth: int) -> Any:
        where = path or "the top"
        if isinstance(v, torch.Tensor):
            _check_saveable(v, f"{what} {where}")
            if path in tensors:  # {"a.b": x, "a": {"b": y}}: both would be saved as "a.b"
                raise TaskError(f"{what}: two tensors would be saved under the name {path!r}")
            tensors[path] = v.detach()
            return tensor_ref(path)
        if depth >= MAX_DEPTH and isinstance(v, (Mapping, list, tuple)):
            raise TaskError(
                f"{what}: nested more than {MAX_DEPTH} levels deep (at {where[:120]}); "
                "Task.state_dict must return tensors and JSON values a few levels deep"
            )
        if isinstance(v, Mapping):
            for k in v:
                if not isinstance(k, str) or not k:
                    raise TaskError(
                        f"{what}: key {k!r} at {where}: keys must be non-empty strings (they "
                        "name the saved tensors)"
                    )
            return plain_dict(
                {k: walk(x, f"{path}.{k}" if path else k, depth + 1) for k, x in v.items()}
            )
        if isinstance(v, (list, tuple)):
            return [walk(x, f"{path}.{i}" if path else str(i), depth + 1) for i, x in enumerate(v)]
        try:
            return to_json(v, f"{what} {path}")
        except TypeError as exc:
            raise TaskError(str(exc)) from None

    if not isinstance(value, Mapping):
        raise TaskError(f"{what}: Task.state_dict() must return a dict, got {type(value).__name__}")
    return tensors, walk(value, "", 0)


def _check_saveable(t: torch.Tensor, where: str) -> None:
    """Refuse a tensor no checkpoint can hold (safetensors keeps dense, real memory only)."""
    if t.is_nested:
        raise TaskError(f"{where}: a nested tensor cannot be saved; save its components")
    if t.layout != torch.strided:
        raise TaskError(f"{where}: a {t.layout} tensor cannot be saved; call .to_dense()")
    if t.device.type == "meta":
        raise TaskError(f"{where}: a meta tensor holds no data to save; materialize it")


def unflatten(
    tensors: Mapping[str, torch.Tensor], saved: Any, device: torch.device | None = None
) -> Any:
    """Undo `flatten`: the tensors put back in their places (moved to `device` if given)."""
    from hpsearch.training.state import tensor_name, unwrapped

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if (name := tensor_name(v)) is not None:
                if name not in tensors:
                    raise CheckpointMismatch(
                        f"the task state names the tensor {name!r}, which the checkpoint does "
                        "not hold"
                    )
                t = tensors[name]
                return t.to(device) if device is not None else t
            inner = unwrapped(v)
            return {k: walk(x) for k, x in (v if inner is None else inner).items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(saved)


def load_task_state(
    task: Any, tensors: Mapping[str, torch.Tensor], saved: Any, device: torch.device, *, copy: bool
) -> None:
    """Give the task the state it was saved with; `copy` when the source must stay untouched
    (a base held in memory for the forks to come)."""
    if saved is None:
        if has_task_state(task):
            raise CheckpointMismatch(
                f"{type(task).__name__} keeps state of its own (Task.state_dict) but the "
                "checkpoint holds none: it was made by another task, or before the task had it"
            )
        return
    if not has_task_state(task):
        raise CheckpointMismatch(
            f"the checkpoint holds task state but {type(task).__name__} does not define "
            "Task.state_dict/load_state_dict: it was made by another version of the task"
        )
    given = {k: v.clone() for k, v in tensors.items()} if copy else tensors
    task.load_state_dict(unflatten(given, saved, device))
