"""A LightningModule and LightningDataModule as a Lightning user writes them, tuned by hpsearch.

Nothing here knows hpsearch but the last three lines: `DigitsTask` names the module and the data
module, and `studies/lightning.yaml` names `DigitsTask`. Needs `pip install 'hpsearch[lightning]'`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
import torchmetrics
from digits import digits_tensors  # examples/digits.py: the same images, read without sklearn
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from hpsearch.integrations.lightning import LightningTask


class DigitsModule(L.LightningModule):
    """64 -> hidden -> 10 with dropout; AdamW with a per-epoch StepLR, as Lightning steps it;
    accuracy as torchmetrics metrics, reset by Lightning (and hpsearch) at each epoch's end."""

    def __init__(self, lr: float = 1e-2, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
        )
        self.train_accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.val_accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_accuracy(logits, y)
        self.log("train_loss", loss)
        self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.val_accuracy(logits, y)
        self.log("val_accuracy", self.val_accuracy)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class DigitsData(L.LightningDataModule):
    """scikit-learn's digits (no download), `n_train` images to train on, 360 to validate."""

    def __init__(self, n_train: int = 1437) -> None:
        super().__init__()
        self.n_train = n_train

    def setup(self, stage: str) -> None:
        x, y = digits_tensors()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
        val, train = order[:360], order[360 : 360 + self.n_train]
        self.train, self.val = TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=64, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=128)


class DigitsTask(LightningTask):
    module = DigitsModule
    datamodule = DigitsData
