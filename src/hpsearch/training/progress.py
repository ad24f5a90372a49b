"""Where a run is, and the budgets and intervals counted from a segment's origin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpsearch.training.loop import Trainer


@dataclass(frozen=True)
class Every:
    """An interval counted in samples or in optimizer steps from the segment's origin."""

    samples: int | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.steps is None):
            raise ValueError("Every needs exactly one of samples= or steps=")
        if (self.samples or self.steps or 0) <= 0:
            raise ValueError(f"an interval must be positive, got {self}")

    def index(self, p: Progress) -> int:
        """How many boundaries the segment has passed."""
        if self.samples is not None:
            return (p.samples - p.origin_samples) // self.samples
        return (p.step - p.origin_step) // self.steps  # type: ignore[operator]


@dataclass(frozen=True)
class Budget:
    """Where a segment ends: after `samples` or `steps` counted from its origin."""

    samples: int | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.steps is None):
            raise ValueError("Budget needs exactly one of samples= or steps=")

    def reached(self, p: Progress) -> bool:
        if self.samples is not None:
            return p.samples - p.origin_samples >= self.samples
        return p.step - p.origin_step >= self.steps  # type: ignore[operator]


@dataclass
class Progress:
    step: int = 0  # optimizer steps since the run began (warm-up included)
    samples: int = 0  # samples since the run began: the data position
    origin_step: int = 0  # where the current segment began
    origin_samples: int = 0


class Hooks:
    """What the loop reports. Override what you need; raising from a hook stops training."""

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        pass

    def on_eval(self, trainer: Trainer, index: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer) -> None:
        pass
