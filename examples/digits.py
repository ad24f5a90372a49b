"""A real, small task: an MLP on scikit-learn's bundled digits (1,797 8x8 images, no download).

Dropout, AdamW and a cosine LR schedule with a short linear warm-up: trains in seconds on a CPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hpsearch


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (images scaled to [0, 1], labels).

    The CSV that scikit-learn ships is read directly: importing `sklearn.datasets` costs about
    1.7 s of every process's start-up here, reading the file 0.02 s. The values are the ones
    `sklearn.datasets.load_digits()` returns, which is used where the file is not found."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    where = os.path.dirname(spec.origin) if spec is not None and spec.origin else ""
    path = os.path.join(where, "datasets", "data", "digits.csv.gz")
    if where and os.path.exists(path):
        table = torch.from_numpy(np.loadtxt(path, delimiter=","))
        images, labels = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - a scikit-learn that stores its data elsewhere
        from sklearn.datasets import load_digits

        data = load_digits()
        images, labels = torch.from_numpy(data.data), torch.from_numpy(data.target)
    return images.to(torch.float32) / 16.0, labels.to(torch.long)


def digits_datasets(val_fraction: float = 0.2) -> tuple[TensorDataset, TensorDataset]:
    """The digits set, scaled to [0, 1], split by a fixed permutation (1437 train / 360 val)."""
    x, y = digits_tensors()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    n_val = round(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class DigitsMLP(hpsearch.Task):
    """64 -> hidden -> hidden -> 10 with dropout; hparams: lr, dropout, batch_size, weight_decay,
    hidden, and optionally `lr_warmup_steps` for the task's own warm-up-then-cosine scheduler."""

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        return digits_datasets()

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        h = int(hparams.get("hidden", 256))
        p = float(hparams.get("dropout", 0.1))
        return nn.Sequential(
            nn.Linear(64, h), nn.ReLU(), nn.Dropout(p),
            nn.Linear(h, h), nn.ReLU(), nn.Dropout(p),
            nn.Linear(h, 10),
        )  # fmt: skip

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            model.parameters(),
            lr=float(hparams["lr"]),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
        )

    def scheduler(
        self, optimizer: torch.optim.Optimizer, hparams: dict[str, Any], total_steps: int
    ) -> torch.optim.lr_scheduler.LambdaLR | None:
        warm = int(hparams.get("lr_warmup_steps", 0))
        if warm <= 0 or total_steps <= 0:
            return None
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, _WarmupCosine(warm, max(total_steps, warm + 1))
        )

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        correct, total, loss = 0, 0, 0.0
        for x, y in loader:
            logits = model(x)
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            total += len(y)
        return {"val_accuracy": correct / total, "val_loss": loss / total}


class _WarmupCosine:
    """Linear warm-up then cosine to 10 %. A class, not a lambda, so its state is plain data."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / (self.total - self.warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))
