"""The blob-backend Protocol: the few things a place that keeps files must do for a store.

A backend knows nothing of manifests, hashes or codecs: it writes a checkpoint's files under a
temporary name and publishes them atomically, reads a file as a stream, lists the root, removes
entries and writes the root's marker. `StoreCore` (core.py) keeps every rule of the format on
top of it, so a new place to keep checkpoints (S3 with conditional writes, a database) is one
small class; `hpsearch.testing.conformance.store.StoreTestCase` checks it.

The root holds one entry per checkpoint, `<id>/` with its files, plus names a backend may
generate for work in progress: `.tmp-<id>-<pid>` (a save being written, local and memory
backends) and `.del-<id>` (a delete cut short). Only these names and ids `new_id()` makes are
ever removed as leftovers.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from hpsearch.checkpoint.format import ID_RE
from hpsearch.errors import CheckpointWriteError

TMP_RE = re.compile(r"\.tmp-(?P<id>" + ID_RE.pattern + r")-(?P<pid>[0-9]+)")
DEL_RE = re.compile(r"\.del-(?P<id>" + ID_RE.pattern + r")")
# Exactly the ids new_id() makes: the only checkpoint directories a cleanup may ever remove.
NEW_ID_RE = re.compile(r"ck-[0-9a-f]{1,16}-[0-9a-f]{8}")
# The file that marks a root as hpsearch's; its first line names the layout.
MARKER = ".hpsearch-store"
MARKER_TEXT = (
    b"hpsearch-store 1\n"
    b"This directory holds hpsearch checkpoints. hpsearch deletes the checkpoints and torn saves\n"
    b"it wrote here (ck-<hex>-<hex>, .tmp-*, .del-*) and nothing else.\n"
)
MAX_MANIFEST = 64 << 20


class StagedSave(Protocol):
    """One checkpoint's files being written: invisible to every read until `commit` returns."""

    entry: str  # the root entry holding the files meanwhile (a leftover if the process dies)
    where: str  # how that entry is shown in messages
    sync_waits: bool  # whether `sync` waits for the disk (so hashing can hide behind it)

    def create(self) -> None:
        """Make the place the files go (CheckpointWriteError naming it if that fails)."""
        ...

    def open(self, name: str) -> BinaryIO:
        """A new, empty file `name` opened for writing (OSError if that fails)."""
        ...

    def sync(self, f: BinaryIO) -> None:
        """Make an open file's bytes durable (a no-op where nothing can be made durable)."""
        ...

    def commit(self, manifest: bytes) -> None:
        """Write the manifest last and publish the checkpoint atomically; on any failure the
        checkpoint is not visible afterwards. Raises CheckpointWriteError naming the path."""
        ...

    def discard(self) -> None:
        """Remove whatever was written; never raises."""
        ...


class BlobBackend(Protocol):
    """Where a store keeps its files. Names given to it are checked by the store first."""

    url: str  # as the user gave it

    def where(self, entry: str | None = None, name: str | None = None) -> str:
        """How an entry of the root (or a file in it, or with no entry the root) is shown."""
        ...

    def stage(self, ckpt_id: str) -> StagedSave:
        """Prepare a save of `ckpt_id` (nothing is written yet); CheckpointWriteError if an
        entry `ckpt_id` exists already (ids are never reused)."""
        ...

    def open_read(
        self, entry: str, name: str
    ) -> contextlib.AbstractContextManager[tuple[BinaryIO, int]]:
        """(a binary stream, its size in bytes); FileNotFoundError if there is no such file."""
        ...

    def is_file(self, entry: str, name: str) -> bool:
        """Whether the file exists."""
        ...

    def entries(self) -> list[tuple[str, bool]] | None:
        """(name, is a directory) of each entry of the root; None if the root does not exist.
        ForeignStoreRoot if the root is a file."""
        ...

    def uncommit(self, ckpt_id: str) -> str:
        """Make a checkpoint unloadable in one atomic step; returns the entry left to remove
        (nothing happens, and the same is returned, if it is absent)."""
        ...

    def busy(self, entry: str) -> bool:
        """Whether another process may still be writing `entry` in place (a save in flight on a
        store without rename looks like a torn one); False where saves are staged under a name
        of their own."""
        ...

    def size(self, entry: str) -> int:
        """Bytes an entry takes (FileNotFoundError if it is gone)."""
        ...

    def remove(self, entry: str) -> None:
        """Remove an entry and everything in it, never following a link out of the root
        (FileNotFoundError if it is gone)."""
        ...

    def write_marker(self, text: bytes) -> None:
        """Create the root if needed and write MARKER into it, unless it is there already."""
        ...


@contextlib.contextmanager
def writing(ckpt_id: str, path: str) -> Iterator[None]:
    """Turn an OSError while writing `path` into a CheckpointWriteError that names both."""
    try:
        yield
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise CheckpointWriteError(
            f"saving checkpoint {ckpt_id} failed writing {path}: {why}"
            + (f" [errno {e.errno}]" if e.errno else "")
        ) from e


def id_taken(ckpt_id: str, where: str) -> CheckpointWriteError:
    return CheckpointWriteError(
        f"checkpoint {ckpt_id} already exists in {where}; ids are never reused"
    )


class InflightSaves:
    """The root entries that saves of this process are writing right now, so that a cleanup
    never takes a running save for a torn one.

    A store holds one of these, but by default every store shares `PROCESS_SAVES`: the files
    are shared by every store object on a root, so what this process is writing must be too.
    Two store objects on one root in one process are usual (a session's store and a GC pass's,
    a test reopening a root), and a `.tmp-<id>-<our pid>` entry of one would otherwise look
    dead to the other. Entries are full locations (`where(entry)`), so roots never collide.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: set[str] = set()

    @contextlib.contextmanager
    def holding(self, location: str) -> Iterator[None]:
        with self._lock:
            self._entries.add(location)
        try:
            yield
        finally:
            with self._lock:
                self._entries.discard(location)

    def __contains__(self, location: object) -> bool:
        with self._lock:
            return location in self._entries


PROCESS_SAVES = InflightSaves()
