"""The Lightning zoo: LightningModules as users write them, each of which must resume (in a fresh
process) and fork bit for bit through `LightningTask`.

An entry is a module class and the step K it is checkpointed at: torchmetrics metrics (a running
accumulator updated and logged in training_step, list states, a MetricCollection logged with
log_dict), non-persistent buffers (one the build derives, one a run changes), EMA weights (an
`AveragedModel` updated in on_train_batch_end; buffers updated in an own `optimizer_step`) and
the training hooks. `tests/test_lightning.py` trains each K steps, checkpoints, trains K more
(the uninterrupted run), restores the checkpoint here in a fresh process (`python
zoo_lightning.py STORE JOBS.json OUT.json`) and continues, forks (lr and batch_size changed) from
both, and compares everything bitwise. 24 samples of 8 are 3 steps an epoch: K=6 checkpoints at
an epoch's end (the epoch ends in the resumed run), K=7 in the middle of one.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import lightning.pytorch as L
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from hpsearch.integrations.lightning import LightningTask
from hpsearch.training import Budget, Every, Hooks, Trainer

N, DIM, CLASSES = 24, 8, 4
HP: dict[str, Any] = {"lr": 1e-2, "batch_size": 8, "dropout": 0.1}
FORK = {"lr": 3e-3, "batch_size": 5}


class Data(L.LightningDataModule):
    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(1)
        x, y = (
            torch.randn(N + 16, DIM, generator=g),
            torch.randint(0, CLASSES, (N + 16,), generator=g),
        )
        self.train, self.val = TensorDataset(x[:N], y[:N]), TensorDataset(x[N:], y[N:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=6)


class Base(L.LightningModule):
    def __init__(self, lr: float = 1e-2, dropout: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr)


def _multiclass(cls: Any, **kw: Any) -> Any:
    return cls(task="multiclass", num_classes=CLASSES, **kw)


class Metrics(Base):
    """A running accuracy updated and logged in training_step (reset by Lightning at each
    epoch's end), an AUROC of list states reset by the module in on_train_epoch_end, a mean never
    reset, and validation metrics in a MetricCollection logged with log_dict."""

    def __init__(self, lr: float = 1e-2, dropout: float = 0.1) -> None:
        super().__init__(lr, dropout)
        self.train_acc = _multiclass(torchmetrics.Accuracy)
        self.train_auroc = _multiclass(torchmetrics.AUROC, thresholds=None)
        self.loss_mean = torchmetrics.MeanMetric()
        self.val_metrics = torchmetrics.MetricCollection(
            {"val_acc": _multiclass(torchmetrics.Accuracy),
             "val_f1": _multiclass(torchmetrics.F1Score, average="macro")}
        )  # fmt: skip

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        self.train_auroc.update(logits.detach().softmax(-1), y)
        self.loss_mean.update(loss.detach())
        return loss

    def on_train_epoch_end(self) -> None:
        self.train_auroc.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        # the training metrics' running values, in the evaluations the test compares
        for name, metric in (("train_acc", self.train_acc), ("train_auroc", self.train_auroc),
                             ("loss_mean", self.loss_mean)):  # fmt: skip
            if metric.update_count:
                self.log(f"{name}_so_far", metric.compute())


class Buffers(Base):
    """A non-persistent buffer the build derives (not in the checkpoint: the restore must build
    it), and one a run changes and the loss reads."""

    def __init__(self, lr: float = 1e-2, dropout: float = 0.1) -> None:
        super().__init__(lr, dropout)
        g = torch.Generator().manual_seed(3)
        self.register_buffer("mask", (torch.rand(DIM, generator=g) > 0.2).float(), False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.mask)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen += len(y)
        return F.cross_entropy(self(x), y) * (1.0 + (self.seen % 5).float() / 10)


class EmaAveraged(Base):
    """EMA weights in `torch.optim.swa_utils.AveragedModel`, updated in on_train_batch_end and
    validated on."""

    def __init__(self, lr: float = 1e-2, dropout: float = 0.1) -> None:
        super().__init__(lr, dropout)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(0.9))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.net)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.ema(x), y))


class EmaOwnStep(Base):
    """EMA weights in buffers, updated in the module's own `optimizer_step` after it steps; the
    training hooks count their calls in `calls` (epoch starts, epoch ends, before zero_grad,
    before the optimizer step, batch ends)."""

    def __init__(self, lr: float = 1e-2, dropout: float = 0.1) -> None:
        super().__init__(lr, dropout)
        for name, p in self.net.named_parameters():
            self.register_buffer("ema_" + name.replace(".", "_"), p.detach().clone())
        self.register_buffer("calls", torch.zeros(5, dtype=torch.long))

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:  # type: ignore[override]
        optimizer.step(closure=optimizer_closure)
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                self.get_buffer("ema_" + name.replace(".", "_")).lerp_(p, 0.1)

    def on_train_epoch_start(self) -> None:
        self.calls[0] += 1

    def on_train_epoch_end(self) -> None:
        self.calls[1] += 1

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.calls[2] += 1

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.calls[3] += 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert outputs["loss"].requires_grad is False
        self.calls[4] += 1

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        weights = {n: self.get_buffer("ema_" + n.replace(".", "_"))
                   for n, _ in self.net.named_parameters()}  # fmt: skip
        logits = torch.func.functional_call(self.net, weights, (x,))
        self.log("val_loss", F.cross_entropy(logits, y))


# name: (module, the step it is checkpointed at)
ENTRIES: dict[str, tuple[type[Base], int]] = {
    "torchmetrics-mid-epoch": (Metrics, 7),
    "torchmetrics-at-epoch-end": (Metrics, 6),
    "nonpersistent-buffers": (Buffers, 7),
    "ema-averaged-model": (EmaAveraged, 7),
    "ema-own-optimizer-step-and-hooks": (EmaOwnStep, 6),
}


def task(name: str) -> LightningTask:
    module = ENTRIES[name][0]
    cls = type(f"{module.__name__}Task", (LightningTask,), {"module": module, "datamodule": Data})
    return cls()


class Losses(Hooks):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.values.append(loss)


def create(name: str) -> Trainer:
    return Trainer.create(task(name), HP, seed=7, total_samples=8 * N, objective="val_loss")


def restore(name: str, loaded: Any) -> Trainer:
    return Trainer.restore(task(name), loaded.tensors, loaded.state)


def train(trainer: Trainer, until_step: int) -> list[float]:
    losses = Losses()
    trainer.train(Budget(steps=until_step), hooks=losses, eval_every=Every(steps=3))
    return losses.values


def main(url: str, jobs_path: str, out_path: str) -> None:
    """The fresh process: for each {name: checkpoint id} of JOBS, restore and train on, then
    restore again, fork and train on; save both end states to STORE, their ids to OUT."""
    from hpsearch.checkpoint import open_store
    from hpsearch.training import fork

    torch.set_num_threads(1)
    store = open_store(url)
    with open(jobs_path) as f:
        jobs = json.load(f)
    out: dict[str, dict] = {}
    for name, ckpt_id in jobs.items():
        k = ENTRIES[name][1]
        try:
            resumed = restore(name, store.load(ckpt_id))
            result: dict[str, Any] = {"losses": train(resumed, 2 * k)}
            result["resume"] = store.save(*resumed.state()).id
            forked = restore(name, store.load(ckpt_id))
            fork(forked, FORK)
            result["fork_losses"] = train(forked, 2 * k)
            result["fork"] = store.save(*forked.state()).id
            out[name] = result
        except Exception as exc:
            out[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(*sys.argv[1:4])
