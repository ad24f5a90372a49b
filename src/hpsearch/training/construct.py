"""What a `Trainer` is built from: the task's model, optimizer, scheduler and data stream, for a
fresh run (seeded) or from a saved state (`Trainer.state()`), as keyword arguments of
`Trainer(...)`."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from hpsearch.config import TrainingSettings
from hpsearch.errors import CheckpointMismatch
from hpsearch.task import Task
from hpsearch.training import hatches as hx
from hpsearch.training import state as st
from hpsearch.training.build import restored_model
from hpsearch.training.data import DataStream
from hpsearch.training.progress import Progress
from hpsearch.training.schedule import Schedule

if TYPE_CHECKING:
    from hpsearch.training.loop import Trainer

STATE_VERSION = 3  # 2: the escape hatches (training settings, GradScaler, task state); 3: ranks
LR_SCALE = "hpsearch_lr_scale"  # param group key: the group's LR relative to hparams["lr"]


def fresh(
    task: Task,
    hparams: Mapping[str, Any],
    *,
    seed: int,
    device: str | torch.device,
    schedule: Schedule | None,
    total_samples: int | None,
    num_workers: int,
    datasets: tuple[Any, Any] | None,
    objective: str | None,
    training: TrainingSettings | None,
) -> dict[str, Any]:
    """A fresh run's parts: every RNG seeded, then the model, optimizer and scheduler built."""
    torch.set_flush_denormal(True)  # denormals in Adam's moments make CPU steps 20x slower
    training = training or hx.PLAIN
    hx.check_batch_size(training, int(hparams["batch_size"]))
    train_set, val_set = datasets if datasets is not None else task.datasets()
    hp = dict(hparams)
    dev = torch.device(device)
    st.seed_everything(seed)
    model = task.model(hp).to(dev)
    optimizer = task.optimizer(model, hp)
    scheduler = task.scheduler(optimizer, hp, total_steps(total_samples, hp, training))
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
    return dict(
        task=task, hparams=hp, model=model, optimizer=optimizer, scheduler=scheduler,
        stream=stream, val_set=val_set, seed=seed, device=dev, schedule=schedule,
        total_samples=total_samples, progress=Progress(), history=[], objective=objective,
        training=training,
    )  # fmt: skip


def restored(
    task: Task,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
    *,
    device: str | torch.device,
    num_workers: int,
    datasets: tuple[Any, Any] | None,
) -> dict[str, Any]:
    """A saved run's parts. The model is built on the meta device and takes the loaded tensors
    as they are (no random init, no copy)."""
    torch.set_flush_denormal(True)
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointMismatch(
            f"the checkpoint's training state has version {state['version']}, this hpsearch "
            f"reads up to {STATE_VERSION}: upgrade hpsearch"
        )
    train_set, val_set = datasets if datasets is not None else task.datasets()
    hp = dict(state["hparams"])
    dev = torch.device(device)
    model = restored_model(task, hp, tensors, state, dev)
    optimizer = task.optimizer(model, hp)
    training = hx.settings_from_json(state.get("training"))
    # the scheduler first: creating one rewrites the groups' LRs, which the load then restores
    total = state.get("total_samples")
    scheduler = task.scheduler(optimizer, hp, total_steps(total, hp, training))
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
    return dict(
        task=task, hparams=hp, model=model, optimizer=optimizer, scheduler=scheduler,
        stream=stream, val_set=val_set, seed=state["seed"], device=dev,
        schedule=Schedule(**sched) if sched else None, total_samples=total,
        progress=Progress(**p), history=copy.deepcopy(list(state.get("metrics", []))),
        objective=state.get("objective"), training=training, scaler_state=state.get("scaler"),
    )  # fmt: skip


def finish_restore(
    trainer: Trainer,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
) -> None:
    """What a restored trainer takes last: the task's own state, then the RNG."""
    hx.load_task_state(
        trainer.task, tensors.get("task", {}), state.get("task_state"), trainer.device, copy=False
    )
    st.set_rng_state(state["rng"])
    trainer.saved_step = trainer.progress.step
    trainer.processes, trainer.rank_rng = ranks_of(state)


def ranks_of(state: Mapping[str, Any]) -> tuple[int, list[dict[str, Any]] | None]:
    """How many ranks trained a saved state, and their RNG states (None for one)."""
    ranks = state.get("ranks")
    if not ranks:
        return 1, None
    return len(ranks["rng"]), list(ranks["rng"])


def total_steps(
    total_samples: int | None, hparams: Mapping[str, Any], training: TrainingSettings
) -> int:
    """Optimizer steps in the run: what a task's scheduler is sized by."""
    if not total_samples:
        return 0
    per_step = training.accumulate_samples or int(hparams["batch_size"])
    return -(-int(total_samples) // per_step)
