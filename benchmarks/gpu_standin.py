"""A GPU stand-in for the scale-out benchmarks: the digits MLP whose every training step also
sleeps `HPSEARCH_STANDIN_STEP_S` seconds (default 0.04), as a step waits on a GPU. The CPU is then
not what limits several workers on a 2-core machine, so what the benchmarks measure is how busy
the workers are kept and what the bookkeeping costs.

    task: /path/to/benchmarks/gpu_standin.py:SleepyDigits
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))  # fmt: skip
from digits import DigitsMLP

STEP_S = float(os.environ.get("HPSEARCH_STANDIN_STEP_S", "0.04"))


class SleepyDigits(DigitsMLP):
    """DigitsMLP whose step also waits STEP_S seconds (time in `loss`: the training step)."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        time.sleep(STEP_S)
        return super().loss(model, batch)
