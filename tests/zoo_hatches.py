"""The conformance zoo's entries for the loop's escape hatches: clipping by value, gradient
accumulation clipped by norm with a fork that changes the batch size, bf16 autocast on the CPU, fp16
with its GradScaler (on the CPU, clipped after unscaling), `Task.training_step` reading a custom
forkable key, and a task that keeps an EMA of the weights in `Task.state_dict`.

Each is an ordinary zoo entry (`zoo.ZOO`), checked by tests/test_zoo.py like every other one:
resumed in a fresh process and forked, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hpsearch.config import TrainingSettings as T
from zoo import FORK, Spec, ZooTask, _xy


class StepTask(ZooTask):
    """A loss with a weight read from the trial's hparams at every step: a fork changes it with
    no state on the task."""

    forkable_hparams = ("aux_weight",)

    def training_step(self, model: nn.Module, batch: Any, hparams: dict[str, Any]) -> torch.Tensor:
        x, y = _xy(batch)
        logits = model(x)
        return F.cross_entropy(logits, y) + float(hparams["aux_weight"]) * logits.pow(2).mean()


class EMATask(ZooTask):
    """An exponential moving average of the weights kept on the task (not in the model), and a
    count of the batches it has seen; the EMA enters the metrics, so a lost one shows there too."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.ema: dict[str, torch.Tensor] | None = None  # made at the first step
        self.batches = 0

    def training_step(self, model: nn.Module, batch: Any, hparams: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            if self.ema is None:
                self.ema = {n: p.detach().clone() for n, p in model.named_parameters()}
            for n, p in model.named_parameters():
                self.ema[n].lerp_(p, 0.25)
        self.batches += 1
        return self.loss(model, batch)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        ema = sum(float(e.double().norm()) for e in (self.ema or {}).values())
        return {**super().evaluate(model, loader), "ema_norm": ema}

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema, self.batches = state["ema"], state["batches"]


TASKS: dict[str, type[ZooTask]] = {"training_step": StepTask, "ema": EMATask}

# name: (spec, hparams beyond zoo.HP, fork changes where zoo.FORK does not fit)
ENTRIES: dict[str, tuple[Spec, dict[str, Any], dict[str, Any]]] = {
    "hatch-clip_value-sgd": (Spec(optimizer="sgd_nesterov", training=T(clip_value=0.01)), {}, {}),
    # 2 micro-batches of 8 per step, then 4 of 4 after the fork: the effective batch stays 16;
    # the gradient of the whole group is clipped
    "hatch-accumulate-clip_norm-batch_size_fork": (
        Spec(
            scheduler="cosine",
            optimizer="sgd_nesterov",
            training=T(accumulate_samples=16, clip_norm=0.05),
        ),
        {},
        {**FORK, "batch_size": 4},
    ),
    "hatch-bf16": (Spec(training=T(precision="bf16")), {}, {}),
    "hatch-fp16_grad_scaler-clipped": (Spec(training=T(precision="fp16", clip_norm=0.5)), {}, {}),
    "hatch-training_step-forked_aux_weight": (
        Spec(task="training_step"),
        {"aux_weight": 0.1},
        {**FORK, "aux_weight": 0.5},
    ),
    "hatch-task_state_ema-accumulate": (
        Spec(task="ema", training=T(accumulate_samples=24)),
        {},
        {**FORK, "batch_size": 12},
    ),
}
