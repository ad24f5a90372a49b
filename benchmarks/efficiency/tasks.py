"""The held-out workloads of the search-efficiency benchmark (issue 23), as hpsearch Tasks: data
that ships with Python or scikit-learn, or is generated from a seed; nothing is downloaded.

- `DigitsResNet`: a small ResNet (a stem and two stages of basic residual blocks with BatchNorm,
  random-shift augmentation, a searched width) on scikit-learn's bundled digits as 8x8 images.
- `ProseGRU`: a recurrent character language model (an embedding, one GRU layer of a searched
  width, dropout) on the English documentation text Python ships (`pydoc_data.topics`).
- `FriedmanMLP`: an MLP regression on Friedman #1 (10 uniform features of which 5 matter, noise
  1), generated from a fixed seed; objective validation mean squared error.
- `CancerMLP`: an MLP classifier on scikit-learn's bundled breast-cancer table (569 rows, 30
  features standardised on the training split); objective validation loss.

Each trains in seconds on one CPU thread at the benchmark's sizes (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import hpsearch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "examples")
sys.path.insert(0, os.path.abspath(EXAMPLES))
import chars  # noqa: E402
from digits import DigitsMLP  # noqa: E402
from digits_cnn import DigitsCNN, RandomShift  # noqa: E402

# -- a small ResNet ---------------------------------------------------------------------------


class Basic(nn.Module):
    """A basic residual block: two 3x3 conv-BN, a projection where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(out)) + self.skip(x))


class DigitsResNet(DigitsCNN):
    """hparams: lr, weight_decay, dropout, batch_size (forkable); width (fixed for a run)."""

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        w = int(hparams.get("width", 16))
        return nn.Sequential(
            RandomShift(1),
            nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            Basic(w, w, 1), Basic(w, 2 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(float(hparams.get("dropout", 0.1))),
            nn.Linear(2 * w, 10),
        )  # fmt: skip


# -- a recurrent language model ---------------------------------------------------------------

PROSE_CHARS = 400_000
PROSE_CONTEXT = 32
VAL_STRIDE = 4  # keep every fourth validation window: an evaluation costs a few batches


def prose_text() -> str:
    """The documentation topics Python ships for `help()`: English prose with some code."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))[:PROSE_CHARS]


def prose_datasets() -> tuple[Dataset, Dataset]:
    data = chars.encode(prose_text())
    blocks = data.split(chars.BLOCK)
    every = chars.VAL_EVERY
    train = torch.cat([b for i, b in enumerate(blocks) if i % every != every - 1])
    val = torch.cat([b for i, b in enumerate(blocks) if i % every == every - 1])
    windows = chars.Windows(val, PROSE_CONTEXT)
    return (
        chars.Windows(train, PROSE_CONTEXT),
        torch.utils.data.Subset(windows, range(0, len(windows), VAL_STRIDE)),
    )


class GRULM(nn.Module):
    def __init__(self, hidden: int, p: float) -> None:
        super().__init__()
        self.tok = nn.Embedding(chars.VOCAB, 32)
        self.rnn = nn.GRU(32, hidden, batch_first=True)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(hidden, chars.VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.drop(self.tok(idx)))
        return self.head(self.drop(out))


class ProseGRU(chars.CharLM):
    """hparams: lr, dropout, weight_decay, batch_size (forkable); hidden (fixed for a run).
    AdamW, loss and val_bpc as `chars.CharLM`."""

    def datasets(self) -> tuple[Dataset, Dataset]:
        return prose_datasets()

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return GRULM(int(hparams.get("hidden", 64)), float(hparams.get("dropout", 0.1)))


# -- a regression -----------------------------------------------------------------------------

FRIEDMAN_TRAIN, FRIEDMAN_VAL, FRIEDMAN_SEED = 2000, 1000, 1234


def friedman1(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Friedman #1 (as scikit-learn's make_friedman1): y = 10 sin(pi x0 x1) + 20 (x2 - 1/2)^2
    + 10 x3 + 5 x4 + N(0, 1), x uniform on [0, 1]^10 (five features are noise)."""
    x = torch.rand(n, 10, generator=generator)
    y = (
        10 * torch.sin(math.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
        + torch.randn(n, generator=generator)
    )
    return x, y


@functools.cache
def friedman_data() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Inputs, the standardised target, and the target's variance on the training split."""
    x, y = friedman1(FRIEDMAN_TRAIN + FRIEDMAN_VAL, torch.Generator().manual_seed(FRIEDMAN_SEED))
    mu, sd = y[:FRIEDMAN_TRAIN].mean(), y[:FRIEDMAN_TRAIN].std()
    return x, (y - mu) / sd, float(sd) ** 2


class FriedmanMLP(hpsearch.Task):
    """10 -> width -> width -> 1 with dropout, AdamW; hparams: lr, dropout, weight_decay,
    batch_size (forkable), width (fixed for a run). The target is standardised on the training
    split; `val_mse` is in the target's own units (noise floor 1.0)."""

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        x, y, _ = friedman_data()
        train = TensorDataset(x[:FRIEDMAN_TRAIN], y[:FRIEDMAN_TRAIN])
        return train, TensorDataset(x[FRIEDMAN_TRAIN:], y[FRIEDMAN_TRAIN:])

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        w, p = int(hparams.get("width", 64)), float(hparams.get("dropout", 0.0))
        return nn.Sequential(
            nn.Linear(10, w), nn.ReLU(), nn.Dropout(p),
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(p),
            nn.Linear(w, 1),
        )  # fmt: skip

    optimizer = DigitsMLP.optimizer

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x).squeeze(1), y)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        total, count = 0.0, 0
        for x, y in loader:
            total += float(nn.functional.mse_loss(model(x).squeeze(1), y, reduction="sum"))
            count += len(y)
        return {"val_mse": total / count * friedman_data()[2]}


# -- a tabular classifier ---------------------------------------------------------------------

CANCER_VAL, CANCER_SEED = 114, 1234


@functools.cache
def cancer_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled breast-cancer table (read from scikit-learn's CSV: its first line is a
    header of counts), shuffled by a fixed permutation, standardised on the training rows."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.origin is not None
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "breast_cancer.csv")
    table = torch.from_numpy(np.loadtxt(path, delimiter=",", skiprows=1)).to(torch.float32)
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(CANCER_SEED))
    x, y = table[order, :-1], table[order, -1].long()
    train = x[CANCER_VAL:]
    return (x - train.mean(0)) / train.std(0), y


class CancerMLP(DigitsMLP):
    """30 -> width -> width -> 2 with dropout, AdamW (the digits MLP's loss and metrics);
    hparams: lr, dropout, weight_decay, batch_size (forkable), width (fixed for a run)."""

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        x, y = cancer_data()
        v = CANCER_VAL
        return TensorDataset(x[v:], y[v:]), TensorDataset(x[:v], y[:v])

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        w, p = int(hparams.get("width", 64)), float(hparams.get("dropout", 0.1))
        return nn.Sequential(
            nn.Linear(30, w), nn.ReLU(), nn.Dropout(p),
            nn.Linear(w, w), nn.ReLU(), nn.Dropout(p),
            nn.Linear(w, 2),
        )  # fmt: skip
