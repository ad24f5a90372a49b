"""What every checkpoint store promises (`CheckpointStore`), and what it hands out."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hpsearch.checkpoint.format import CheckpointInfo
from hpsearch.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint: its manifest, its tensors (CPU, per group) and its state dict."""

    info: CheckpointInfo
    tensors: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]


class ForeignStoreRoot(UsageError):
    """The checkpoint root holds files hpsearch did not write, so it is not used at all."""


class CheckpointStore(Protocol):
    """What every checkpoint store does; `hpsearch.testing.conformance.store.StoreTestCase`
    checks each backend.

    Rules every implementation keeps:

    - `save` is atomic: afterwards the checkpoint is either fully committed or absent; a failure
      raises CheckpointWriteError and leaves earlier checkpoints untouched.
    - `load` and `verify` compare every file with the manifest (size and hash) before anything is
      returned; a mismatch raises CheckpointCorrupt naming the file.
    - `list`, `info`, `exists` and `load` see committed checkpoints only.
    - `delete` uncommits first, so a crash mid-delete never leaves something loadable.
    - ids are checked wherever they become paths; nothing outside the root is touched.
    - the root is ours only if empty, marked (`.hpsearch-store`) or all hpsearch's (named as
      hpsearch names its entries, with one committed checkpoint at least); otherwise the store
      raises ForeignStoreRoot when opened. Cleanups remove only names hpsearch generates.
    - `load` and `verify` decompress only the codec the store was opened with (or none), and
      never allocate more than the file's safetensors header declares.
    """

    url: str

    def new_id(self) -> str:
        """A fresh id, never returned before: `ck-<time_ns hex>-<8 random hex>`."""
        ...

    def save(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        state: Mapping[str, Any],
        *,
        meta: Mapping[str, Any] | None = None,
        ckpt_id: str | None = None,
    ) -> CheckpointInfo:
        """Commit a new checkpoint; the tensors must not change until it returns."""
        ...

    def load(self, ckpt_id: str, *, groups: Sequence[str] | None = None) -> LoadedCheckpoint:
        """Read, verify and return a checkpoint (all groups, or only `groups`)."""
        ...

    def verify(self, ckpt_id: str) -> CheckpointInfo:
        """Re-hash and re-parse every file; raise CheckpointCorrupt naming what is wrong."""
        ...

    def info(self, ckpt_id: str) -> CheckpointInfo:
        """The validated manifest only; no data file is read."""
        ...

    def list(self) -> list[CheckpointInfo]:
        """Committed checkpoints, oldest first (unreadable manifests are logged and skipped)."""
        ...

    def exists(self, ckpt_id: str) -> bool:
        """Whether a committed checkpoint (one with a manifest) has this id."""
        ...

    def delete(self, ckpt_id: str) -> None:
        """Uncommit, then remove; deleting an absent checkpoint does nothing."""
        ...

    def leftovers(self) -> builtins.list[str]:
        """Names of torn saves and half-done deletes under the root (only names we generate)."""
        ...

    def clean_leftovers(self) -> int:
        """Remove `leftovers()` and return the bytes freed."""
        ...
