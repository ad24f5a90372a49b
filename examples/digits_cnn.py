"""A third real task: a small convolutional network with BatchNorm and data augmentation on
scikit-learn's bundled digits (8x8 images, no download), objective validation loss.

The pattern most image practitioners start from (conv-BN-ReLU blocks, global average pooling,
dropout before the classifier, random-shift augmentation, AdamW), at a size a CPU trains in
seconds. BatchNorm's running statistics and the augmentation's random draws are training state a
fork must carry: both live in the model and in torch's RNG, which hpsearch checkpoints.

hparams: lr, weight_decay, dropout, batch_size (forkable); width (channels of the first block,
fixed for a run: a fork cannot change a layer's shape).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import hpsearch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits import DigitsMLP, digits_datasets


class RandomShift(nn.Module):
    """Shift each training image by up to `pixels` in x and y (zero fill); identity in eval."""

    def __init__(self, pixels: int = 1) -> None:
        super().__init__()
        self.pixels = pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pixels == 0:
            return x
        k = self.pixels
        padded = nn.functional.pad(x, (k, k, k, k))
        n, _, h, w = x.shape
        dx = torch.randint(0, 2 * k + 1, (n,))
        dy = torch.randint(0, 2 * k + 1, (n,))
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        index = torch.arange(n)[:, None, None, None]
        return padded[index, torch.zeros_like(index), rows, cols]


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class DigitsCNN(hpsearch.Task):
    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        train, val = digits_datasets()
        return (
            TensorDataset(train.tensors[0].view(-1, 1, 8, 8), train.tensors[1]),
            TensorDataset(val.tensors[0].view(-1, 1, 8, 8), val.tensors[1]),
        )

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        w = int(hparams.get("width", 16))
        return nn.Sequential(
            RandomShift(1),
            _block(1, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(float(hparams.get("dropout", 0.1))),
            nn.Linear(2 * w, 10),
        )  # fmt: skip

    # the MLP's AdamW, classification loss and metrics (val_loss, val_accuracy)
    optimizer = DigitsMLP.optimizer
    loss = DigitsMLP.loss
    evaluate = DigitsMLP.evaluate
