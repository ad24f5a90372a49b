"""The study's LR schedule: a pure function of training progress measured in samples.

Counting samples rather than steps keeps the schedule exact across resumes and across forks that
change the batch size: `lr = base_lr * lr_factor(samples / total_samples)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Schedule:
    """`warmup` and `final` are fractions: of the whole run, and of the base LR."""

    name: str = "constant"
    warmup: float = 0.0
    final: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SHAPES:
            raise ValueError(f"schedule name must be one of {SHAPES}, got {self.name!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"schedule warmup must be in [0, 1), got {self.warmup}")
        if not 0.0 <= self.final <= 1.0:
            raise ValueError(f"schedule final must be in [0, 1], got {self.final}")

    def factor(self, progress: float) -> float:
        """The LR multiplier at `progress` (0 at the run's start, 1 at its end)."""
        p = min(max(progress, 0.0), 1.0)
        if self.warmup > 0.0 and p < self.warmup:
            return p / self.warmup
        if self.name == "constant":
            return 1.0
        t = (p - self.warmup) / (1.0 - self.warmup)
        if self.name == "linear":
            return 1.0 - (1.0 - self.final) * t
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))
