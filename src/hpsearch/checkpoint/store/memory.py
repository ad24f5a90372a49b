"""`MemoryStore`: checkpoints in this process's memory, for tests and the conformance suite.

Every rule of the format holds as on disk (the core is the same; files are bytes, hashed and
checked on every read). Only the backend differs: a dict of entries, where a save is staged
under `.tmp-<id>-<pid>` and published by moving the entry whole, and a delete moves the entry
to `.del-<id>` first, as the local store's renames do.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO

from hpsearch.checkpoint.store.backend import MARKER, id_taken, writing
from hpsearch.checkpoint.store.core import StoreCore
from hpsearch.checkpoint.store.writing import write_manifest


class MemoryBlobs:
    """The contents of one in-memory root: entries (each a dict of files) and root files.

    Share one between MemoryStore objects to open the same root twice.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exists = False  # a root that was never written to does not exist, as on disk
        self.dirs: dict[str, dict[str, bytes]] = {}
        self.files: dict[str, bytes] = {}  # files directly in the root (the marker)


class MemoryStore(StoreCore):
    """A CheckpointStore in memory. `MemoryStore(store.blobs)` reopens the same root."""

    backend: MemoryBackend

    def __init__(self, blobs: MemoryBlobs | None = None, *, compression: str = "none") -> None:
        super().__init__(MemoryBackend(blobs or MemoryBlobs()), compression)

    @property
    def blobs(self) -> MemoryBlobs:
        return self.backend.blobs


class MemoryBackend:
    def __init__(self, blobs: MemoryBlobs) -> None:
        self.blobs = blobs
        self.url = f"mem://{id(blobs):x}"

    def where(self, entry: str | None = None, name: str | None = None) -> str:
        if entry is None:
            return self.url
        return f"{self.url}/{entry}" + (f"/{name}" if name else "")

    def stage(self, ckpt_id: str) -> _MemoryStaged:
        with self.blobs.lock:
            if ckpt_id in self.blobs.dirs:
                raise id_taken(ckpt_id, self.url)
        return _MemoryStaged(self, ckpt_id)

    @contextlib.contextmanager
    def open_read(self, entry: str, name: str) -> Iterator[tuple[BinaryIO, int]]:
        data = self._file(entry, name)
        yield io.BytesIO(data), len(data)

    def is_file(self, entry: str, name: str) -> bool:
        with self.blobs.lock:
            return name in self.blobs.dirs.get(entry, {})

    def _file(self, entry: str, name: str) -> bytes:
        with self.blobs.lock:
            try:
                return self.blobs.dirs[entry][name]
            except KeyError:
                raise FileNotFoundError(self.where(entry, name)) from None

    def entries(self) -> list[tuple[str, bool]] | None:
        with self.blobs.lock:
            if not self.blobs.exists:
                return None
            return [(n, True) for n in self.blobs.dirs] + [(n, False) for n in self.blobs.files]

    def uncommit(self, ckpt_id: str) -> str:
        doomed = f".del-{ckpt_id}"
        with self.blobs.lock:
            if ckpt_id in self.blobs.dirs:  # a stale half-delete of this id is replaced
                self.blobs.dirs[doomed] = self.blobs.dirs.pop(ckpt_id)
        return doomed

    def busy(self, entry: str) -> bool:
        return False  # saves are staged under .tmp-<id>-<pid>, whose pid tells

    def size(self, entry: str) -> int:
        with self.blobs.lock:
            if entry in self.blobs.files:
                return len(self.blobs.files[entry])
            if entry not in self.blobs.dirs:
                raise FileNotFoundError(self.where(entry))
            return sum(len(d) for d in self.blobs.dirs[entry].values())

    def remove(self, entry: str) -> None:
        with self.blobs.lock:
            if (
                self.blobs.files.pop(entry, None) is None
                and self.blobs.dirs.pop(entry, None) is None
            ):
                raise FileNotFoundError(self.where(entry))

    def write_marker(self, text: bytes) -> None:
        with self.blobs.lock:
            self.blobs.exists = True
            self.blobs.files.setdefault(MARKER, text)


class _MemoryFile(io.BytesIO):
    """A new file: its bytes land in the entry when it is closed, as a write becomes visible."""

    def __init__(self, blobs: MemoryBlobs, files: dict[str, bytes], name: str) -> None:
        super().__init__()
        self._blobs, self._files, self._name = blobs, files, name

    def close(self) -> None:
        if not self.closed:
            with self._blobs.lock:
                self._files[self._name] = self.getvalue()
        super().close()


class _MemoryStaged:
    sync_waits = False

    def __init__(self, backend: MemoryBackend, ckpt_id: str) -> None:
        self._backend = backend
        self._blobs = backend.blobs
        self._id = ckpt_id
        self.entry = f".tmp-{ckpt_id}-{os.getpid()}"
        self.where = backend.where(self.entry)

    def create(self) -> None:
        with writing(self._id, self.where), self._blobs.lock:
            if self.entry in self._blobs.dirs:
                raise FileExistsError(self.where)
            self._blobs.exists = True
            self._blobs.dirs[self.entry] = {}

    def open(self, name: str) -> BinaryIO:
        with self._blobs.lock:
            files = self._blobs.dirs.get(self.entry)
            if files is None:
                raise FileNotFoundError(f"{self.where}/{name}")
            if name in files:
                raise FileExistsError(f"{self.where}/{name}")
            files[name] = b""
        return _MemoryFile(self._blobs, files, name)

    def sync(self, f: BinaryIO) -> None:
        pass  # memory is as durable as it gets

    def commit(self, manifest: bytes) -> None:
        write_manifest(self, self._id, manifest)
        final = self._backend.where(self._id)
        with writing(self._id, final), self._blobs.lock:
            if self._id in self._blobs.dirs:
                raise FileExistsError(final)
            self._blobs.dirs[self._id] = self._blobs.dirs.pop(self.entry)

    def discard(self) -> None:
        with self._blobs.lock:
            self._blobs.dirs.pop(self.entry, None)
