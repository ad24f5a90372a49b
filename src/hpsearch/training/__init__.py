"""The training core: data order, full training state, the loop, forking. No Optuna, no I/O."""

from hpsearch.config import FORKABLE  # the one registry; re-exported as it always was
from hpsearch.training.data import DataStream, epoch_order
from hpsearch.training.fork import fork
from hpsearch.training.loop import Budget, Every, Hooks, Progress, Trainer
from hpsearch.training.schedule import Schedule

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
