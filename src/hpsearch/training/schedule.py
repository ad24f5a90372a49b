"""The study's LR schedule: a pure function of training progress measured in samples.

Counting samples rather than steps keeps the schedule exact across resumes and across forks that
change the batch size: `lr = base_lr * lr_factor(samples / total_samples)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpsearch.config import ScheduleSettings

SHAPES = ("cosine", "linear", "constant", "wsd")


@dataclass(frozen=True)
class Schedule:
    """`warmup` and `final` are fractions: of the whole run, and of the base LR.

    `wsd` (warm-up, stable, decay) holds the base LR after the warm-up and decays it linearly to
    `final` over the run's last `decay` fraction: a run forked in its stable phase trains at its
    own LR, and each run ends with its own cooldown (Hägele et al., 2024)."""

    name: str = "constant"
    warmup: float = 0.0
    final: float = 0.0
    decay: float = 0.0  # wsd only

    def __post_init__(self) -> None:
        if self.name not in SHAPES:
            raise ValueError(f"schedule name must be one of {SHAPES}, got {self.name!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"schedule warmup must be in [0, 1), got {self.warmup}")
        if not 0.0 <= self.final <= 1.0:
            raise ValueError(f"schedule final must be in [0, 1], got {self.final}")
        if self.name == "wsd" and not (0.0 < self.decay <= 1.0 - self.warmup):
            raise ValueError(f"wsd decay must be in (0, 1 - warmup], got {self.decay}")

    @classmethod
    def of(cls, settings: ScheduleSettings | None) -> Schedule | None:
        """The study file's schedule (None: the task's own, or a constant LR)."""
        if settings is None:
            return None
        return cls(settings.name, settings.warmup, settings.final, settings.decay)

    def factor(self, progress: float) -> float:
        """The LR multiplier at `progress` (0 at the run's start, 1 at its end)."""
        p = min(max(progress, 0.0), 1.0)
        if self.warmup > 0.0 and p < self.warmup:
            return p / self.warmup
        if self.name == "constant":
            return 1.0
        if self.name == "wsd":
            start = 1.0 - self.decay
            if p <= start:
                return 1.0
            return 1.0 - (1.0 - self.final) * (p - start) / self.decay
        t = (p - self.warmup) / (1.0 - self.warmup)
        if self.name == "linear":
            return 1.0 - (1.0 - self.final) * t
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))
