"""Tasks of the model families users brought us, each once broken: a CNN with BatchNorm, tied
input/output embeddings, random augmentation in DataLoader workers, and a task that raises.

Used by tests/test_families.py through study files, like a user's own task.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from digits import DigitsMLP, digits_datasets

import hpsearch


class DigitsCNN(DigitsMLP):
    """Conv + BatchNorm (running statistics updated in place in every training forward pass)."""

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        c = int(hparams.get("hidden", 8))
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(float(hparams.get("dropout", 0.1))),
            nn.Linear(c * 16, 10),
        )  # fmt: skip

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(), lr=float(hparams["lr"]), momentum=0.9, nesterov=True,
            weight_decay=float(hparams.get("weight_decay", 0.0)),
        )  # fmt: skip


class Jitter(Dataset):
    """Random augmentation in `__getitem__`: torch noise, a NumPy gain and a `random` shift."""

    def __init__(self, base: TensorDataset) -> None:
        self.x, self.y = base.tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i].reshape(8, 8)
        img = torch.roll(img, random.choice((-1, 0, 1)), dims=1)
        img = img * float(np.random.uniform(0.8, 1.2)) + 0.05 * torch.randn(8, 8)
        return img.reshape(64), self.y[i]


class AugmentedDigits(DigitsMLP):
    """The digits MLP trained on jittered images; the study sets `data.num_workers: 2`."""

    def datasets(self) -> tuple[Dataset, Dataset]:
        train, val = digits_datasets()
        return Jitter(train), val


def _text(n: int, seed: int) -> torch.Tensor:
    """Sentences from a tiny grammar, as byte tokens: learnable, and made here (no download)."""
    rng = random.Random(seed)
    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "fast", "and"]
    out = " ".join(rng.choice(words) for _ in range(n)).encode()
    return torch.tensor(list(out), dtype=torch.long) % 64


class TinyLM(nn.Module):
    """A one-block causal transformer whose output head is tied to its input embedding."""

    def __init__(self, d: int, p: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, d)
        self.pos = nn.Parameter(torch.zeros(16, d))
        self.block = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=p, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 64, bias=False)
        self.head.weight = self.emb.weight  # tied, as in GPT-2 and nanoGPT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        h = self.block(self.emb(x) + self.pos[: x.shape[1]], src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


class TiedCharLM(hpsearch.Task):
    def datasets(self) -> tuple[Dataset, Dataset]:
        def windows(tokens: torch.Tensor) -> TensorDataset:
            n = (len(tokens) - 1) // 16
            x = tokens[: n * 16].reshape(n, 16)
            y = tokens[1 : n * 16 + 1].reshape(n, 16)
            return TensorDataset(x, y)

        return windows(_text(1200, 0)), windows(_text(200, 1))

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return TinyLM(int(hparams.get("hidden", 16)), float(hparams.get("dropout", 0.1)))

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            model.parameters(), lr=float(hparams["lr"]),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
        )  # fmt: skip

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).reshape(-1, 64), y.reshape(-1))

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        total, n = 0.0, 0
        for x, y in loader:
            total += float(
                F.cross_entropy(model(x).reshape(-1, 64), y.reshape(-1), reduction="sum")
            )
            n += y.numel()
        return {"val_loss": total / n}


class RaisesAfterRestore(DigitsMLP):
    """A task whose loss fails in a restored process (it reads a global that only the first
    process set): what check-resume must report as `file: what failed: error`."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if os.environ.get("HPSEARCH_TEST_FIRST_PROCESS") != str(os.getpid()):
            raise RuntimeError("the vocabulary was never loaded in this process")
        return super().loss(model, batch)


class PlateauDigits(DigitsMLP):
    """The digits MLP with ReduceLROnPlateau, stepped at each evaluation with the objective."""

    def scheduler(self, optimizer: Any, hparams: dict[str, Any], total_steps: int) -> Any:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", factor=0.5, patience=0)


class CharTree(TiedCharLM):
    """The tied char-level transformer (nn.TransformerEncoderLayer: nn.Dropout modules and a
    nn.MultiheadAttention whose dropout is a float) on exactly 256 training windows, so that a
    tree's rungs at quarters of an epoch fall on batch boundaries for batch sizes up to 64."""

    def datasets(self) -> tuple[Dataset, Dataset]:
        train, val = super().datasets()
        x, y = train.tensors
        return TensorDataset(x[:256], y[:256]), val


class SmoothedDigits(DigitsMLP):
    """The digits MLP whose loss smooths its labels by `label_smoothing`, a key no fork changes:
    the criterion is built in `model()` and kept on the task (as users write it), and
    `apply_hparams` handles a key of its own (`gain`, not searched) and nothing else."""

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(hparams["label_smoothing"]))
        return super().model(hparams)

    def apply_hparams(self, model: nn.Module, optimizer: Any, hparams: dict[str, Any]) -> None:
        for key in hparams:
            if key != "gain":
                raise KeyError(key)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return self.criterion(model(x), y)


class AttentionDigits(DigitsMLP):
    """The digits as 8 tokens of 8 pixels through one `nn.MultiheadAttention`: the model's only
    dropout is the attention's float (no `nn.Dropout` module)."""

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return _Attend(float(hparams.get("dropout", 0.1)))


class _Attend(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=p, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.reshape(-1, 8, 8)
        out, _ = self.attn(s, s, s)
        return self.head(out.flatten(1))


class DropoutOnTask(DigitsMLP):
    """A dropout kept on the task, set in `optimizer()` (not in `model()`) and read by its loss:
    nothing a fork does reaches it, so searching it is refused at load."""

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        self.p = float(hparams["dropout"])
        return super().optimizer(model, hparams)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(F.dropout(x, self.p, model.training)), y)


class DropoutOnTaskApplied(DropoutOnTask):
    """The same, with `apply_hparams` setting it: what a task does for a dropout kept where
    `Task.model` does not build it."""

    def apply_hparams(self, model: nn.Module, optimizer: Any, hparams: dict[str, Any]) -> None:
        for key, value in hparams.items():
            if key != "dropout":
                raise KeyError(key)
            self.p = float(value)
