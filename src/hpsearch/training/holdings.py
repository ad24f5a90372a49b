"""What a model and a task hold outside their tensors, as plain values by path.

A dropout hides in many places besides `torch.nn.Dropout.p`: `torch.nn.MultiheadAttention` and
`torch.nn.RNN`/`LSTM`/`GRU` keep it as a float `dropout`, a module of the task's may keep one for
`F.dropout` or `F.scaled_dot_product_attention(dropout_p=...)`, a Hugging Face model keeps it in
its config and in its attention modules' `attention_dropout`, a loss module built in
`Task.model` keeps its `label_smoothing`, and a task may keep any of these on itself. The load
check (`hpsearch.training.forkcheck`) builds the task twice, with two values of a key, and
compares what `holdings` finds in each: a key must change something, and a fork must reach all
of it.

Every module's attributes are read (its type, numbers, strings, and the plain objects it holds,
such as a config, two levels deep), except the bookkeeping every `torch.nn.Module` has; of the
task and the objects it holds, only the public attributes (a private one is the task's own
bookkeeping: a cache keyed by object ids differs between any two builds). Tensors, optimizers,
schedulers and data are state, not holdings: a fork keeps the tensors and sets the optimizer's
keys itself, and the data depend on no hyperparameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["differences", "holdings"]

_MODULE_OWN = frozenset(vars(torch.nn.Module()))  # _parameters, _buffers, hooks, training, ...
# state, not settings: the fork keeps the tensors, sets the optimizer's and the scheduler's keys
# itself, and the data do not depend on hyperparameters
_NOT_HOLDINGS = (
    torch.Tensor,
    type,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
    torch.optim.lr_scheduler.ReduceLROnPlateau,
    torch.utils.data.Dataset,
    torch.utils.data.DataLoader,
    torch.Generator,
)
_DEPTH = 2  # plain objects (a config, a config's sub-config) read below a module or the task
_MOST = 64  # items of a list or dict read: a long sequence is data, not a setting


def holdings(roots: Mapping[str, Any], *, private: bool = True) -> dict[str, Any]:
    """Plain values by path (`model.blocks.0.attn.dropout`, `MyTask.criterion.label_smoothing`)
    under each named root (a model, a task). `private`: read modules' private attributes too."""
    out: dict[str, Any] = {}
    seen: set[int] = set()

    def module(path: str, m: torch.nn.Module) -> None:
        for name, sub in m.named_modules():
            where = f"{path}.{name}" if name else path
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            out[where] = f"<{type(sub).__qualname__}>"
            for k, v in vars(sub).items():
                if k in _MODULE_OWN or (k.startswith("_") and not private):
                    continue
                value(f"{where}.{k}", v, _DEPTH)

    def value(path: str, v: Any, depth: int) -> None:
        if v is None or isinstance(v, (bool, int, float, str)):
            out[path] = v
        elif isinstance(v, torch.nn.Module):
            module(path, v)
        elif isinstance(v, _NOT_HOLDINGS) or callable(v) or id(v) in seen:
            return
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v[:_MOST]):
                value(f"{path}[{i}]", x, depth)
        elif isinstance(v, Mapping):
            for k, x in _items(v):
                if isinstance(k, str) and not k.startswith("_"):
                    value(f"{path}[{k!r}]", x, depth)
        elif depth > 0 and hasattr(v, "__dict__"):
            seen.add(id(v))
            for k, x in _items(vars(v)):
                if isinstance(k, str) and not k.startswith("_"):
                    value(f"{path}.{k}", x, depth - 1)

    for name, root in roots.items():
        if isinstance(root, torch.nn.Module):
            module(name, root)
        else:
            seen.add(id(root))
            for k, v in vars(root).items():
                if not k.startswith("_"):
                    value(f"{name}.{k}", v, _DEPTH)
    return out


def _items(mapping: Any) -> list[tuple[Any, Any]]:
    """The first items of a mapping; none of one that cannot be read (a lazy or odd mapping
    holds no setting this check can compare)."""
    try:
        return list(mapping.items())[:_MOST]
    except Exception:
        return []


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(path, value in a, value in b) wherever the two holdings differ; `...` where absent."""
    out = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path, ...), b.get(path, ...)
        if not _same(x, y):
            out.append((path, x, y))
    return out


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return type(x) is type(y) and x == y
