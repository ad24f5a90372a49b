"""Checkpoint stores: where checkpoints are committed, listed, loaded, verified and deleted.

    protocol.py  CheckpointStore (what every store promises), LoadedCheckpoint, ForeignStoreRoot
    core.py      StoreCore: the format's rules (ids, manifest, hashes, codec, leftovers, the
                 root's marker) over any blob backend
    backend.py   BlobBackend and StagedSave: what a place that keeps files must do
    local.py     LocalStore: a directory, fsynced, committed by an atomic rename
    fsspec.py    FsspecStore: any fsspec URL, the manifest written last is the commit
    memory.py    MemoryStore: this process's memory (tests, the conformance suite)

A new backend passes `hpsearch.testing.conformance.store.StoreTestCase`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpsearch.checkpoint.store.backend import MARKER, NEW_ID_RE, BlobBackend, StagedSave
from hpsearch.checkpoint.store.core import StoreCore
from hpsearch.checkpoint.store.fsspec import FsspecStore
from hpsearch.checkpoint.store.local import LocalStore
from hpsearch.checkpoint.store.memory import MemoryBlobs, MemoryStore
from hpsearch.checkpoint.store.protocol import CheckpointStore, ForeignStoreRoot, LoadedCheckpoint

__all__ = [
    "MARKER",
    "NEW_ID_RE",
    "BlobBackend",
    "CheckpointStore",
    "ForeignStoreRoot",
    "FsspecStore",
    "LoadedCheckpoint",
    "LocalStore",
    "MemoryBlobs",
    "MemoryStore",
    "StagedSave",
    "StoreCore",
    "open_store",
]


def open_store(url_or_path: str, *, compression: str = "none") -> CheckpointStore:
    """The store for a directory or URL: a path or file:// gets the atomic-rename LocalStore,
    any other fsspec URL (memory://, s3://, ...) an FsspecStore."""
    if "://" not in url_or_path:
        return LocalStore(url_or_path, compression=compression)
    protocol, rest = url_or_path.split("://", 1)
    if protocol == "file":
        return LocalStore(rest, compression=compression)
    return FsspecStore(url_or_path, compression=compression)


if TYPE_CHECKING:  # mypy checks that each store fits the protocol, each backend its own
    from hpsearch.checkpoint.store.fsspec import FsspecBackend
    from hpsearch.checkpoint.store.local import LocalBackend
    from hpsearch.checkpoint.store.memory import MemoryBackend

    _stores: list[CheckpointStore] = [LocalStore("/x"), FsspecStore("memory://x"), MemoryStore()]
    _backends: list[BlobBackend] = [LocalBackend("/x"), FsspecBackend("memory://x"),
                                    MemoryBackend(MemoryBlobs())]  # fmt: skip
