"""Data the store conformance suite saves: tensors of every dtype and shape, bad ids."""

from __future__ import annotations

import math

import torch

from hpsearch.checkpoint.format import DTYPES

BAD_IDS = ["../x", "a/b", "", ".tmp-x", ".del-x", "..", ".", "/etc", "a\\b", "x" * 200, "a b", "é"]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaNs included), for every dtype, float8 too."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(
        torch.equal(
            a.contiguous().reshape(-1).view(torch.uint8),
            b.contiguous().reshape(-1).view(torch.uint8),
        )
    )


def sample_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bytes viewed as `dtype` (NaNs and odd bit patterns included)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    raw = torch.randint(0, 256, (n * torch.empty((), dtype=dtype).element_size(),), generator=g)
    t = raw.to(torch.uint8).view(dtype).reshape(shape)
    return (t != 0) if dtype == torch.bool else t


def all_dtypes_tensors() -> dict[str, torch.Tensor]:
    """Every savable dtype (bf16 and float8 too) in 0-dim, empty and n-dim shapes."""
    out = {}
    shapes = [(), (0,), (7,), (2, 3, 5), (0, 4)]
    for i, (name, dtype) in enumerate(DTYPES.items()):
        for j, shape in enumerate(shapes):
            out[f"{name.lower()}.{j}"] = sample_tensor(dtype, shape, seed=100 * i + j)
    return out


def small_state() -> dict[str, dict[str, torch.Tensor]]:
    return {
        "model": {"w": torch.randn(4, 3), "b": torch.zeros(3)},
        "optimizer": {"state.0.exp_avg": torch.randn(4, 3), "state.0.step": torch.tensor(3.0)},
    }


def flip_middle(data: bytes) -> bytes:
    pos = len(data) // 2
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]
