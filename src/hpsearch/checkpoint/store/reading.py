"""Verified reads: every byte is hashed and checked against the manifest before it is used.

Reading a compressed file never allocates more than its safetensors header declares, nor more
than a file of its size may hold (`format.zstd_limit`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import ZSTD_FLOOR, ZSTD_RATIO, CheckpointInfo, zstd_limit
from hpsearch.checkpoint.store.backend import MAX_MANIFEST, BlobBackend
from hpsearch.errors import CheckpointCorrupt, CheckpointError, CheckpointNotFound

if TYPE_CHECKING:  # tensors only where data files are read: a manifest read needs no torch
    import torch

# read(f, size, algo, where) -> (what was read, hex digest, whether exactly `size` bytes)
Reader = Callable[[BinaryIO, int, str, str], tuple[Any, str, bool]]


def read_small(backend: BlobBackend, ckpt_id: str, name: str) -> bytes:
    """A whole small file (a manifest), refusing one that is implausibly large."""
    with backend.open_read(ckpt_id, name) as (f, size):
        # read(n) allocates n bytes up front: ask for what the file holds, not the limit
        data = f.read(min(size, MAX_MANIFEST) + 1)
    if len(data) > MAX_MANIFEST:
        raise CheckpointCorrupt(f"{backend.where(ckpt_id, name)}: implausibly large")
    return bytes(data)


def read_verified(
    backend: BlobBackend,
    exists: Callable[[str], bool],
    info: CheckpointInfo,
    name: str,
    read: Reader = hashing.read_hashed,
) -> Any:
    """Read one file with `read` and return what was read only if its size and hash match the
    manifest. `exists(id)` tells a deleted checkpoint from a missing file."""
    size, digest = info.files[name]
    where = backend.where(info.id, name)
    try:
        with backend.open_read(info.id, name) as (f, actual):
            if actual != size:
                raise CheckpointCorrupt(
                    f"{where}: {actual} bytes, but the manifest says {size} "
                    f"({'truncated' if actual < size else 'bytes appended'})"
                )
            buf, got, exact = read(f, size, info.hash, where)
    except FileNotFoundError:
        if not exists(info.id):
            raise CheckpointNotFound(f"checkpoint {info.id} was deleted while being read") from None
        raise CheckpointCorrupt(f"{where}: missing, but listed in the manifest") from None
    except OSError as e:
        raise CheckpointError(f"{where}: cannot be read: {e}") from e
    except MemoryError:
        raise CheckpointCorrupt(no_memory(where, size)) from None
    if not exact:
        raise CheckpointCorrupt(f"{where}: changed size while being read")
    if got != digest:
        raise CheckpointCorrupt(
            f"{where}: content does not match the manifest's {info.hash} hash "
            f"(expected {digest[:16]}…, got {got[:16]}…): the file is corrupted"
        )
    return buf


def parse(info: CheckpointInfo, where: str, buf: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of one verified file held in `buf` (decompressed first if it is zstd)."""
    from hpsearch.checkpoint.tensorfile import parse_file

    try:
        if info.compression == "zstd":
            return _decompress_safetensors(buf, where)
        return parse_file(buf, where)
    except MemoryError:
        raise CheckpointCorrupt(no_memory(where, None)) from None


def _decompress_safetensors(stored: torch.Tensor, where: str) -> dict[str, torch.Tensor]:
    """Decompress one zstd-framed safetensors file straight into its tensors, allocating only
    what its header declares.

    The header (length, then JSON) is decompressed first and bounds everything after it; a
    frame that declares another size, or holds more or less than the header says, is corrupt.
    Neither may declare more than a file of this size can hold (`format.zstd_limit`): a small
    file that would decompress to gigabytes is refused before anything is allocated.
    """
    from hpsearch.checkpoint.tensorfile import read_file

    limit = zstd_limit(stored.numel())
    try:
        with hashing.zstd_frame(stored) as (declared, r):
            if declared > limit:
                raise ValueError(
                    f"the zstd frame declares {declared} bytes, more than a file of "
                    f"{stored.numel()} bytes may hold ({limit}: {ZSTD_RATIO}x its size, at "
                    f"least {ZSTD_FLOOR >> 20} MiB); hpsearch never writes one: forged or damaged"
                )
            size = declared if declared >= 0 else None
            tensors = read_file(r.readinto, size, where, limit=limit)
            if r.read(1):
                raise ValueError("the zstd frame holds more than its safetensors header declares")
    except ValueError as e:
        raise CheckpointCorrupt(f"{where}: {e}") from None
    return tensors


def read_tensors(
    f: BinaryIO, size: int, algo: str, where: str
) -> tuple[dict[str, torch.Tensor], str, bool]:
    """Read a `size`-byte safetensors file into one allocation per tensor, hashing while
    reading (in a second thread, in order): (tensors, hex digest, exact). The caller must not
    use the tensors unless `exact` and the digest matches."""
    from hpsearch.checkpoint.tensorfile import read_file

    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    hasher = hashing.new_hasher(algo)
    readinto = getattr(f, "readinto", None)

    def fill(view: memoryview) -> int:
        if readinto is not None:
            return int(readinto(view))
        data = f.read(len(view))
        view[: len(data)] = data
        return len(data)

    with ThreadPoolExecutor(1, thread_name_prefix="hpsearch-hash") as pool:
        pending: list[Future[None]] = []
        try:
            tensors = read_file(
                fill, size, where, lambda v: pending.append(pool.submit(hasher.update, v))
            )
        finally:
            for p in pending:
                p.result()
    return tensors, hasher.hexdigest(), not f.read(1)


def no_memory(where: str, size: int | None) -> str:
    what = f"{size} bytes" if size is not None else "it"
    return (
        f"{where}: not enough memory to read {what}; treated as unreadable (a checkpoint "
        "larger than this machine can hold is not usable here)"
    )
