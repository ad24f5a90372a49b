"""Checkpoints: a verified on-disk format, stores that commit atomically, background saving.

This package knows nothing of Optuna or the training loop: a checkpoint is named groups of
tensors (one safetensors file each), a JSON state dict and a manifest that commits them.

    store = open_store("runs/checkpoints")                  # or "s3://bucket/prefix"
    # s3: open_store(url, storage_options={"endpoint_url": ...}, cache_dir="~/.cache/hpsearch")
    info = store.save({"model": model.state_dict()}, {"step": 100}, meta={"trial": 3})
    ck = store.load(info.id)                                 # verified before returned
    model.load_state_dict(ck.tensors["model"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpsearch.checkpoint.async_save import AsyncSaver
    from hpsearch.checkpoint.format import FORMAT_VERSION, CheckpointInfo
    from hpsearch.checkpoint.store import (
        MARKER,
        CheckpointStore,
        ForeignStoreRoot,
        FsspecStore,
        LoadedCheckpoint,
        LocalStore,
        MemoryStore,
        ReadCache,
        open_store,
    )

# Each name is imported on first use: the read-only commands (status, tree, export) open a
# store without ever touching a tensor, and torch alone costs them seconds to import.
_WHERE = {
    "AsyncSaver": "async_save",
    "FORMAT_VERSION": "format",
    "CheckpointInfo": "format",
    **dict.fromkeys(
        ("MARKER", "CheckpointStore", "ForeignStoreRoot", "FsspecStore", "LoadedCheckpoint",
         "LocalStore", "MemoryStore", "ReadCache", "open_store"),
        "store",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "MARKER",
    "AsyncSaver",
    "CheckpointInfo",
    "CheckpointStore",
    "ForeignStoreRoot",
    "FsspecStore",
    "LoadedCheckpoint",
    "LocalStore",
    "MemoryStore",
    "ReadCache",
    "open_store",
]
