"""Deterministic, resumable data order.

The order of samples in epoch `e` is a permutation that depends on (seed, e) only, and a run's
position is counted in samples. The whole stream of a run is therefore one fixed sequence of sample
indices -- epoch 0's permutation, then epoch 1's, ... -- and batches merely cut it into pieces
(never across an epoch boundary). A run that resumes, or a fork that changes the batch size
mid-epoch, continues with exactly the samples its parent would have seen next.

Randomness inside the data pipeline (augmentation in `Dataset.__getitem__`) is made a pure function
of (seed, epoch, sample index) too: `SeededSamples` seeds Python's `random`, NumPy's global RNG and
torch's CPU generator before each sample is fetched, in the main process and in DataLoader workers
alike, so a sample is augmented the same way whatever the number of workers, the batch size, or
where a run was cut. In the main process the training RNGs (dropout, ...) are put back after each
batch, so fetching data never moves them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset, TensorDataset

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


_EVAL = -1  # the "epoch" of evaluation samples: each is augmented the same way at every evaluation


def _draws_no_randomness(dataset: Any) -> bool:
    """True for torch's own datasets that only index tensors: seeding before each of their
    samples would cost ~20 us a sample (four times a digits epoch) for nothing."""
    if isinstance(dataset, TensorDataset):
        return True
    if isinstance(dataset, Subset):
        return _draws_no_randomness(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return all(_draws_no_randomness(d) for d in dataset.datasets)
    return False


class SeededSamples(Dataset):
    """A map-style dataset seen through sample keys: key `k` is sample `k % n` of epoch
    `k // n` (or, with `epoch=`, sample `k` of that fixed epoch), fetched with `random`, NumPy
    and torch's CPU generator seeded from (seed, epoch, sample index).

    DataLoader calls `__getitems__` with one batch of keys; in the main process the global RNG
    states are saved before the batch and put back after it.
    """

    def __init__(self, dataset: Dataset, seed: int, *, epoch: int | None = None) -> None:
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.epoch = epoch
        self.seeded = not _draws_no_randomness(dataset)

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name: str) -> Any:
        # a task's evaluate() may read its own dataset's attributes through loader.dataset
        if name.startswith("__") or name in ("dataset", "n", "seed", "epoch", "seeded"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _split(self, key: int) -> tuple[int, int]:
        if self.epoch is not None:
            return self.epoch, key
        return divmod(key, self.n)

    def __getitem__(self, key: int) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int]) -> list[Any]:
        if not self.seeded:
            return [self.dataset[self._split(k)[1]] for k in keys]
        main = torch.utils.data.get_worker_info() is None
        if main:
            saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            out = []
            for key in keys:
                epoch, index = self._split(key)
                s = mix_seed(self.seed, epoch, index, 2)
                random.seed(s)
                np.random.seed(s & 0xFFFFFFFF)
                torch.default_generator.manual_seed(s)
                out.append(self.dataset[index])
            return out
        finally:
            if main:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


class PositionBatchSampler(Sampler[list[int]]):
    """Yields batches of sample indices from one sample position to the end of its epoch.

    `position` counts samples since the start of the run; `epoch = position // n`.
    """

    def __init__(
        self, seed: int, n: int, batch_size: int, position: int, *, keys: bool = False
    ) -> None:
        if n <= 0:
            raise ValueError(f"the training set must not be empty, got {n} samples")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seed, self.n, self.batch_size, self.position = seed, n, batch_size, position
        self.epoch, self.offset = divmod(position, n)
        self.keys = keys  # yield SeededSamples keys (epoch * n + index) instead of indices

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.seed, self.epoch, self.n)
        if self.keys:
            order = order + self.epoch * self.n
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
        self._samples = SeededSamples(dataset, seed)
        self.batch_size = batch_size
        self.position = position
        self.collate = collate
        self.num_workers = num_workers
        self.shard: tuple[int, int] | None = None  # (rank, ranks): load only that share
        self._it: Iterator[tuple[list[int], Any]] | None = None

    def set_shard(self, rank: int | None, world: int = 1) -> None:
        """Load only rank `rank`'s share of each batch (of `world` ranks); None: all of it.
        The batches' sample indices stay the whole batch's: the position is the run's."""
        shard = None if rank is None else (rank, world)
        if shard != self.shard:
            self.shard = shard
            self._it = None

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
        """Return (sample indices, batch) and advance the position by len(indices). With a
        shard, the batch holds this rank's share of those samples (None when it has none)."""
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
        keyed = PositionBatchSampler(self.seed, self.n, self.batch_size, self.position, keys=True)
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, keyed.epoch, keyed.offset, 1))
        if self._samples.seed != self.seed:  # a fork may load another run's seed
            self._samples = SeededSamples(self.dataset, self.seed)
        whole: Any = keyed
        shares: list[list[int]] = []
        if self.shard is not None:  # the loader fetches this rank's share of each batch only
            from hpsearch.training.ranks import shard_bounds

            whole = list(iter(keyed))
            for keys in whole:
                a, b = shard_bounds(len(keys), *self.shard)
                shares.append(keys[a:b])
        loader = DataLoader(
            self._samples,
            batch_sampler=keyed if self.shard is None else [s for s in shares if s],
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=g,
        )
        first = keyed.epoch * self.n  # keys are epoch * n + index
        if self.shard is None:
            batches = zip(iter(keyed), loader, strict=True)
            return (([k - first for k in keys], batch) for keys, batch in batches)
        return _with_shares(whole, shares, iter(loader), first)


def _with_shares(
    whole: list[list[int]], shares: list[list[int]], fetched: Iterator[Any], first: int
) -> Iterator[tuple[list[int], Any]]:
    for keys, share in zip(whole, shares, strict=True):
        yield [k - first for k in keys], next(fetched) if share else None


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    collate: Callable[[Sequence[Any]], Any] | None = None,
    num_workers: int = 0,
    *,
    seed: int = 0,
) -> DataLoader:
    """A sequential loader for evaluation that never draws from the global RNG; a random
    transform of a validation sample is the same at every evaluation."""
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(
        SeededSamples(dataset, seed, epoch=_EVAL),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=num_workers,
        generator=g,
    )
