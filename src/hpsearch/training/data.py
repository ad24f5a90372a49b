"""Deterministic, resumable data order.

The order of samples in epoch `e` is a permutation that depends on (seed, e) only, and a run's
position is counted in samples. The whole stream of a run is therefore one fixed sequence of sample
indices -- epoch 0's permutation, then epoch 1's, ... -- and batches merely cut it into pieces
(never across an epoch boundary). A run that resumes, or a fork that changes the batch size
mid-epoch, continues with exactly the samples its parent would have seen next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, epoch) over the 63-bit seed space


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers, stable across processes and Python versions."""
    h = 0
    for p in parts:
        h = (h * _MIX + (int(p) & 0xFFFFFFFFFFFFFFFF) + 1) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of range(n) used in `epoch`: a function of (seed, epoch, n) only."""
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, epoch))
    return torch.randperm(n, generator=g)


class PositionBatchSampler(Sampler[list[int]]):
    """Yields batches of sample indices from one sample position to the end of its epoch.

    `position` counts samples since the start of the run; `epoch = position // n`.
    """

    def __init__(self, seed: int, n: int, batch_size: int, position: int) -> None:
        if n <= 0:
            raise ValueError(f"the training set must not be empty, got {n} samples")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seed, self.n, self.batch_size, self.position = seed, n, batch_size, position
        self.epoch, self.offset = divmod(position, n)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.seed, self.epoch, self.n)
        for start in range(self.offset, self.n, self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-(self.n - self.offset) // self.batch_size)


class DataStream:
    """Endless batches of a map-style dataset, starting at any sample position.

    Each epoch (or the rest of one, after a resume) gets a fresh DataLoader iterator. Its
    generator is seeded from (seed, epoch, offset) so that creating it never draws from the
    global torch RNG, which is part of the saved training state.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int,
        batch_size: int,
        position: int = 0,
        collate: Callable[[Sequence[Any]], Any] | None = None,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.batch_size = batch_size
        self.position = position
        self.collate = collate
        self.num_workers = num_workers
        self._it: Iterator[tuple[list[int], Any]] | None = None

    def set_batch_size(self, batch_size: int) -> None:
        """Continue from the current sample position with another batch size."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._it = None

    def seek(self, position: int) -> None:
        self.position = position
        self._it = None

    def next_batch(self) -> tuple[list[int], Any]:
        """Return (sample indices, batch) and advance the position by len(indices)."""
        while True:
            if self._it is None:
                self._it = self._epoch_iter()
            try:
                indices, batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self.position += len(indices)
            return indices, batch

    def _epoch_iter(self) -> Iterator[tuple[list[int], Any]]:
        sampler = PositionBatchSampler(self.seed, self.n, self.batch_size, self.position)
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, sampler.epoch, sampler.offset, 1))
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=g,
        )
        return zip(iter(sampler), loader, strict=True)


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    collate: Callable[[Sequence[Any]], Any] | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A sequential loader for evaluation that never draws from the global RNG."""
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=num_workers,
        generator=g,
    )
