"""`self.log` inside the hooks hpsearch calls: collected and reduced over a validation epoch as
Lightning's Trainer reduces it, and, in training, only the torchmetrics `Metric` objects kept
(Lightning resets them at the end of each training epoch; hpsearch records evaluations only)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hpsearch.errors import TaskError
from hpsearch.integrations.lightning._compat import Metric, extract_batch_size

_REDUCE = {"mean": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_FNS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}
_LOG_PARAMS = ("prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "enable_graph",
               "sync_dist", "sync_dist_group", "add_dataloader_idx", "batch_size")  # fmt: skip


class Logged:
    """`self.log` calls of one validation epoch, reduced at its end as Lightning reduces them."""

    def __init__(self) -> None:
        self.batch: Any = None
        self.values: dict[str, tuple[str, list[tuple[float, int]], Any]] = {}

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        opts = dict(zip(_LOG_PARAMS, args, strict=False)) | kwargs
        on_step, on_epoch = opts.get("on_step"), opts.get("on_epoch")
        if on_epoch is False:
            how = "last"  # a step-only value: the last one is what callback_metrics holds
        else:
            fx = opts.get("reduce_fx", "mean")
            found = _REDUCE.get(fx) if isinstance(fx, str) else _REDUCE_FNS.get(fx)
            if found is None:
                raise TaskError(f"self.log({name!r}): reduce_fx {fx!r} is not supported")
            how = found
        key = f"{name}_epoch" if on_step and on_epoch is not False else name
        if isinstance(value, Metric):  # computed at the epoch's end, then reset, as Lightning
            self.values[key] = ("metric", [], value)
            return
        size = opts.get("batch_size") or (extract_batch_size(self.batch) if self.batch else 1)
        entry = self.values.setdefault(key, (how, [], None))
        entry[1].append((_scalar(name, value), int(size)))

    def log_dict(self, dictionary: Any, *args: Any, **kwargs: Any) -> None:
        for k, v in dictionary.items():
            self.log(k, v, *args, **kwargs)

    def reduce(self) -> dict[str, float]:
        out = {}
        for key, (how, seen, metric) in self.values.items():
            if metric is not None:
                out[key] = _scalar(key, metric.compute())
            elif how == "mean":
                out[key] = sum(v * n for v, n in seen) / sum(n for _, n in seen)
            else:
                values = [v for v, _ in seen]
                picks: dict[str, Callable[[list[float]], float]] = {
                    "sum": sum, "max": max, "min": min, "last": lambda x: x[-1],
                }  # fmt: skip
                out[key] = float(picks[how](values))
        for _, _, metric in self.values.values():
            if metric is not None:  # after every compute: one metric may be logged twice
                metric.reset()
        return out


class TrainLogged:
    """`self.log` in training: the values are dropped (hpsearch records the evaluations), the
    `Metric` objects logged are remembered, to be reset at the epoch's end as Lightning does."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(value, Metric) and all(value is not m for m in self.metrics):
            self.metrics.append(value)

    def log_dict(self, dictionary: Any, *args: Any, **kwargs: Any) -> None:
        for k, v in dictionary.items():
            self.log(k, v)


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TaskError(f"self.log({name!r}): the value must be a scalar, got {value.shape}")
        return float(value.detach())
    return float(value)


@contextlib.contextmanager
def logging_into(model: torch.nn.Module, sink: Logged | TrainLogged) -> Iterator[None]:
    """`model.log` / `model.log_dict` go to `sink` while the block runs; the module's class is
    untouched, and the instance gets its own methods back after (a nested block leaves the outer
    one's in place)."""
    before = {k: model.__dict__[k] for k in ("log", "log_dict") if k in model.__dict__}
    object.__setattr__(model, "log", sink.log)
    object.__setattr__(model, "log_dict", sink.log_dict)
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            model.__dict__.pop(name, None)
        for name, method in before.items():
            object.__setattr__(model, name, method)
