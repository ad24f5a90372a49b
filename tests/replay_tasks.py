"""Tiny tasks for the replay conformance matrix (tests/test_replay_matrix.py): a regression MLP on
500 samples (no batch size divides it, so rungs fall between batches) or 512 (rungs on batch
boundaries), with a task scheduler, or with a step that fails once (a retry)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import hpsearch

FLAKY_ENV = "HPSEARCH_TEST_FLAKY"  # a file: while it exists, the Nth step it names raises once


class Odd(hpsearch.Task):
    n = 500

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        g = torch.Generator().manual_seed(11)
        x = torch.randn(self.n + 100, 8, generator=g)
        y = torch.tanh(x @ torch.randn(8, 1, generator=g)) + 0.05 * torch.randn(
            self.n + 100, 1, generator=g
        )
        return TensorDataset(x[: self.n], y[: self.n]), TensorDataset(x[self.n :], y[self.n :])

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(float(hparams["dropout"])),
                             nn.Linear(16, 1))  # fmt: skip

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            model.parameters(), lr=float(hparams["lr"]),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
        )  # fmt: skip

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        total, n = 0.0, 0
        for x, y in loader:
            total += float(nn.functional.mse_loss(model(x), y, reduction="sum"))
            n += len(y)
        return {"val_loss": total / n}


class Even(Odd):
    n = 512


class Scheduled(Odd):
    """The task's own scheduler (no `schedule:` in the study): cosine over the run's steps."""

    def scheduler(
        self, optimizer: torch.optim.Optimizer, hparams: dict[str, Any], total: int
    ) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))


class Flaky(Odd):
    """Its `steps`-th training step in a process raises once while the file named by
    HPSEARCH_TEST_FLAKY exists (then deletes it): a trial that fails mid-way and is retried."""

    steps = 0

    def training_step(self, model: nn.Module, batch: Any, hparams: dict[str, Any]) -> torch.Tensor:
        flag = os.environ.get(FLAKY_ENV, "")
        type(self).steps += 1
        if flag and os.path.exists(flag):
            with open(flag) as f:
                at = int(f.read())
            if type(self).steps >= at:
                os.unlink(flag)
                raise RuntimeError("a flaky step")
        return self.loss(model, batch)
