"""Checkpoint stores: where checkpoints are committed, listed, loaded, verified and deleted.

    protocol.py  CheckpointStore (what every store promises), LoadedCheckpoint, ForeignStoreRoot
    core.py      StoreCore: the format's rules (ids, manifest, hashes, codec, leftovers) over
                 any blob backend
    root.py      whose root is this: the marker, and when an unmarked root is adopted
    backend.py   BlobBackend and StagedSave: what a place that keeps files must do
    local.py     LocalStore: a directory, fsynced, committed by an atomic rename
    fsspec.py    FsspecStore: any fsspec URL (s3:// through s3fs), the manifest uploaded last
                 is the commit
    cache.py     ReadCache: verified files of a remote store on local disk, read once
    memory.py    MemoryStore: this process's memory (tests, the conformance suite)

A new backend passes `hpsearch.testing.conformance.store.StoreTestCase`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpsearch.checkpoint.store.backend import MARKER, NEW_ID_RE, BlobBackend, StagedSave
from hpsearch.checkpoint.store.cache import DEFAULT_MAX_BYTES, ReadCache, store_key
from hpsearch.checkpoint.store.core import ReadCounts, StoreCore
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
    "ReadCache",
    "ReadCounts",
    "StagedSave",
    "StoreCore",
    "open_store",
]


def open_store(
    url_or_path: str,
    *,
    compression: str = "none",
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    cache_max_bytes: int = DEFAULT_MAX_BYTES,
) -> CheckpointStore:
    """The store for a directory or URL: a path or file:// gets the atomic-rename LocalStore,
    any other fsspec URL (s3://, memory://, ...) an FsspecStore given `storage_options`.

    With `cache_dir`, verified files are kept in `<cache_dir>/<key of this store>/` (at most
    `cache_max_bytes`), so each is read from the store once.
    """
    options = dict(storage_options or {})
    if "://" not in url_or_path:
        protocol, rest = "", url_or_path
    else:
        protocol, rest = url_or_path.split("://", 1)
    cache = None
    if cache_dir is not None:
        key = store_key(rest if protocol in ("", "file") else url_or_path, options)
        cache = ReadCache(os.path.join(cache_dir, key), cache_max_bytes)
    if protocol in ("", "file"):
        if options:
            raise ValueError("storage_options are for fsspec URLs, not a local directory")
        return LocalStore(rest, compression=compression, cache=cache)
    return FsspecStore(url_or_path, compression=compression, cache=cache, **options)


if TYPE_CHECKING:  # mypy checks that each store fits the protocol, each backend its own
    from hpsearch.checkpoint.store.fsspec import FsspecBackend
    from hpsearch.checkpoint.store.local import LocalBackend
    from hpsearch.checkpoint.store.memory import MemoryBackend

    _stores: list[CheckpointStore] = [LocalStore("/x"), FsspecStore("memory://x"), MemoryStore()]
    _backends: list[BlobBackend] = [LocalBackend("/x"), FsspecBackend("memory://x"),
                                    MemoryBackend(MemoryBlobs())]  # fmt: skip
