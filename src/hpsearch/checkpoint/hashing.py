"""Streaming checkpoint I/O: hash while writing, hash while reading, optional zstd.

Every checkpoint byte goes to a file through `write_all` and is made durable through `fsync`:
that one small write layer is where a test injects ENOSPC or EIO, and where a failure can only
come from. No copy of a tensor's bytes is made on the way to the file, and hashing is hidden
behind I/O rather than added to it (blake3 releases the GIL on large inputs):

- `hash_views` hashes the bytes just written, on every core, while their fsync waits on the
  disk (the local store's path);
- `HashingWriter` hashes in a second thread while the bytes stream out (no fsync to hide
  behind: fsspec stores, zstd output);
- `read_hashed` hashes chunk k while chunk k+1 is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

import blake3

from hpsearch.errors import UsageError

if TYPE_CHECKING:
    import torch

HASH = "blake3"
# Big enough that a syscall and a hand-off to the hash thread cost nothing per byte, small
# enough that hashing chunk k overlaps reading/writing chunk k+1.
CHUNK = 8 << 20
# The largest zstd window a read accepts (zstd's own default limit is 128 MiB).
_MAX_ZSTD_WINDOW = 32 << 20
# Pieces below this (small tensors, compressed frames) are gathered into one write.
_SMALL = 256 << 10

HASHERS: dict[str, Callable[[bytes], str]] = {
    "blake3": lambda data: blake3.blake3(data).hexdigest(),
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
}


def new_hasher(algo: str) -> Any:
    return blake3.blake3() if algo == "blake3" else hashlib.new(algo)


# ---------------------------------------------------------------------------------------------
# The write layer: the only two functions that put checkpoint bytes on a file system.


def write_all(f: BinaryIO, view: memoryview) -> None:
    """Write all of `view` to `f`, looping over short writes (a raw file may write less)."""
    while len(view):
        n = f.write(view)
        if n is None:  # some file-likes (fsspec) take everything and return nothing
            return
        view = view[n:]


def fsync(fd: int) -> None:
    """Flush a file's or directory's data and metadata to stable storage."""
    os.fsync(fd)


# ---------------------------------------------------------------------------------------------


def hash_views(views: list[memoryview], algo: str = HASH) -> str:
    """Hash buffers in order, using every core (blake3 on large inputs), releasing the GIL.

    The local store calls this while the file holding these bytes is being fsynced: the CPU is
    idle then, and hashing while writing would compete with the copy into the page cache for
    CPU and memory bandwidth (measured: save 1.3x slower when they overlap).
    """
    if algo != "blake3":
        h = hashlib.new(algo)
        for v in views:
            h.update(v)
        return h.hexdigest()
    hb = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for v in views:
        hb.update(v)
    return str(hb.hexdigest())


class HashingWriter:
    """A write-only stream that writes to `f` through `write_all` and hashes the same bytes.

    Use as a context manager, call `finish()` for (size, hex digest). Buffers handed to `write`
    must stay unchanged until `finish()` returns (the hash thread may still be reading them).
    """

    def __init__(self, f: BinaryIO, algo: str = HASH) -> None:
        self._f = f
        self._hasher = new_hasher(algo)
        # A pool per writer, not per process: a process-wide pool would hang in a forked child.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hpsearch-hash")
        self._pending: list[Future[None]] = []
        self._small = bytearray()
        self.size = 0

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self.size += n
        if n < _SMALL:
            self._small += view
            if len(self._small) >= CHUNK:
                self._flush_small()
            return n
        self._flush_small()
        for i in range(0, n, CHUNK):
            part = view[i : i + CHUNK]
            self._hash(part)
            write_all(self._f, part)
        return n

    def flush(self) -> None:  # for zstd's stream writer; durability is the caller's fsync
        pass

    def _flush_small(self) -> None:
        if self._small:
            data = bytes(self._small)
            self._small.clear()
            self._hash(memoryview(data))
            write_all(self._f, memoryview(data))

    def _hash(self, part: memoryview) -> None:
        still = []
        for p in self._pending:
            if p.done():
                p.result()  # surface a hashing error now rather than at the end
            else:
                still.append(p)
        self._pending = still
        self._pending.append(self._pool.submit(self._hasher.update, part))

    def finish(self) -> tuple[int, str]:
        """Write what is buffered, wait for the hash, return (bytes written, hex digest)."""
        self._flush_small()
        for p in self._pending:
            p.result()
        self._pending.clear()
        return self.size, self._hasher.hexdigest()


def empty_bytes(n: int) -> torch.Tensor:
    """A fresh uint8 CPU tensor of n bytes, allocated by NumPy.

    NumPy asks the kernel for transparent huge pages on large allocations and torch does not;
    filling fresh memory is then ~4x faster (measured: 200 MB read from cache in 16 ms instead of
    73 ms), which is most of a warm load's cost.
    """
    import numpy as np  # with torch, only where tensors are made: reading a manifest needs none
    import torch

    return torch.from_numpy(np.empty(n, dtype=np.uint8))


def read_hashed(
    f: BinaryIO, size: int, algo: str, where: str = ""
) -> tuple[torch.Tensor, str, bool]:
    """Read `size` bytes of `f` into one fresh uint8 tensor, hashing while reading.

    Returns (buffer, hex digest, exact): `exact` is False if the file ended early or has more
    bytes than `size`; the buffer then holds what was read. The caller trusts the buffer only if
    `exact` and the digest matches.
    """
    with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation, ValueError):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger readahead
    buf = empty_bytes(size)
    view = buf.numpy().data
    hasher = new_hasher(algo)
    readinto = getattr(f, "readinto", None)
    pos = 0
    with ThreadPoolExecutor(1, thread_name_prefix="hpsearch-hash") as pool:
        pending: list[Future[None]] = []
        while pos < size:
            target = view[pos : pos + CHUNK]
            if readinto is not None:
                n = readinto(target)
            else:
                data = f.read(len(target))
                n = len(data)
                target[:n] = data
            if not n:
                break
            pending.append(pool.submit(hasher.update, view[pos : pos + n]))
            pos += n
        for p in pending:
            p.result()
    exact = pos == size and not f.read(1)
    return (buf if pos == size else buf[:pos]), hasher.hexdigest(), exact


# ---------------------------------------------------------------------------------------------
# zstd: optional, imported only when used.


def zstd_module() -> Any:
    """The `zstandard` module, or a clear error saying how to install it."""
    try:
        import zstandard
    except ImportError:
        raise UsageError(
            "compression 'zstd' needs the 'zstandard' package: pip install 'hpsearch[zstd]'"
        ) from None
    return zstandard


def zstd_writer(sink: HashingWriter, size: int) -> Any:
    """A stream that compresses into `sink`; the frame records `size` so reads preallocate.

    Level 1 with one worker per core: fp32 training state compresses little at any level, so
    speed is what matters.
    """
    zstd = zstd_module()
    cctx = zstd.ZstdCompressor(level=1, threads=-1)
    return cctx.stream_writer(sink, size=size, closefd=False)


@contextlib.contextmanager
def zstd_frame(stored: torch.Tensor) -> Iterator[tuple[int, Any]]:
    """Open one verified zstd frame for streaming reads: (declared content size or -1, reader).

    Nothing is allocated for the output here: the caller reads what it can bound. ZstdError
    anywhere inside becomes ValueError.
    """
    zstd = zstd_module()
    src = stored.numpy().data
    try:
        declared = zstd.frame_content_size(src)
        # The frame names its window size too; levels 1-19 use at most 8 MiB (ours: level 1).
        dctx = zstd.ZstdDecompressor(max_window_size=_MAX_ZSTD_WINDOW)
        with dctx.stream_reader(src, read_across_frames=False) as r:
            yield int(declared), r
    except zstd.ZstdError as e:
        raise ValueError(f"zstd data is damaged ({e})") from None
