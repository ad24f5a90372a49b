"""The training core: data order, full training state, the loop, forking. No Optuna, no I/O."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from hpsearch.config import FORKABLE  # the one registry; re-exported as it always was

if TYPE_CHECKING:
    from hpsearch.training.data import DataStream, epoch_order
    from hpsearch.training.fork import fork
    from hpsearch.training.loop import Trainer
    from hpsearch.training.progress import Budget, Every, Hooks, Progress
    from hpsearch.training.schedule import Schedule

# Each name is imported on first use: budgets, intervals and schedules are plain data that the
# read-only commands (`best` prints a recipe) use without the loop, and the loop imports torch.
_WHERE = {
    **dict.fromkeys(("Budget", "Every", "Hooks", "Progress"), "progress"),
    "Schedule": "schedule",
    "DataStream": "data",
    "epoch_order": "data",
    "fork": "fork",
    "Trainer": "loop",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """`hpsearch.training.fork` is the function, as it was when this package imported it at
    once: the import system binds a submodule on its package when it is first imported, and the
    module `fork` must not shadow the function of that name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "fork" and isinstance(value, types.ModuleType):
            value = value.fork
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "FORKABLE",
    "Budget",
    "DataStream",
    "Every",
    "Hooks",
    "Progress",
    "Schedule",
    "Trainer",
    "epoch_order",
    "fork",
]
