"""`configure_optimizers` in any single-optimizer form, and its scheduler stepped as Lightning
steps it (`interval`, `frequency`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hpsearch.errors import TaskError


def split(out: Any, model: str) -> tuple[torch.optim.Optimizer, dict[str, Any] | None]:
    """The optimizer and the scheduler config of any single-optimizer `configure_optimizers`."""
    scheds: list[Any] = []
    if isinstance(out, dict):
        opts, sched = [out.get("optimizer")], out.get("lr_scheduler")
        scheds = [sched] if sched is not None else []
    elif isinstance(out, list | tuple) and len(out) == 2 and _both_lists(out):
        opts, scheds = list(out[0]), list(out[1])
    elif isinstance(out, list | tuple):
        opts = list(out)
    else:
        opts = [out]
    if len(opts) != 1 or not isinstance(opts[0], torch.optim.Optimizer) or len(scheds) > 1:
        raise TaskError(
            f"{model}.configure_optimizers must return one optimizer (alone, in a list, as "
            "([opt], [sched]) or as {'optimizer': opt, 'lr_scheduler': ...}) and at most one "
            f"scheduler; got {_describe(out)}"
        )
    if not scheds:
        return opts[0], None
    config = scheds[0] if isinstance(scheds[0], dict) else {"scheduler": scheds[0]}
    if "scheduler" not in config:
        raise TaskError(f"{model}.configure_optimizers: an lr_scheduler dict needs 'scheduler'")
    return opts[0], config


def _both_lists(out: Sequence[Any]) -> bool:
    return all(isinstance(x, list | tuple) for x in out)


def _describe(out: Any) -> str:
    if isinstance(out, dict):
        return "a dict with keys " + ", ".join(map(str, out))
    if isinstance(out, list | tuple):
        return f"a {type(out).__name__} of {len(out)}"
    return type(out).__name__


class LightningScheduler:
    """A torch LR scheduler stepped once every `period` of hpsearch's once-per-step calls, as
    Lightning steps one configured with `interval`/`frequency`. The count is in its state, so a
    resumed run steps it at the very same optimizer steps."""

    def __init__(self, scheduler: Any, period: int) -> None:
        self.scheduler = scheduler
        self.period = period
        self.calls = 0

    def step(self) -> None:
        self.calls += 1
        if self.calls % self.period == 0:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "period": self.period,
                "calls": self.calls}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.period, self.calls = int(state["period"]), int(state["calls"])

    def get_last_lr(self) -> list[float]:
        return list(self.scheduler.get_last_lr())

    # a fork of `lr` moves the scheduler's base LRs (hpsearch.training.fork): the inner ones
    @property
    def base_lrs(self) -> list[float]:
        return self.scheduler.base_lrs

    @property
    def _last_lr(self) -> list[float]:
        return self.scheduler._last_lr

    @_last_lr.setter
    def _last_lr(self, value: list[float]) -> None:
        self.scheduler._last_lr = value
