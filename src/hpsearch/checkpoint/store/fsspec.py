"""`FsspecStore`: checkpoints under any fsspec URL (memory://, s3://, gs://, file://).

Object stores have no rename, so data files are written in place and the manifest, written
last, commits; delete removes the manifest first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import MANIFEST
from hpsearch.checkpoint.store.backend import MARKER, id_taken, writing
from hpsearch.checkpoint.store.core import StoreCore
from hpsearch.checkpoint.store.protocol import ForeignStoreRoot
from hpsearch.checkpoint.store.writing import write_manifest


class FsspecStore(StoreCore):
    """Checkpoints under any fsspec URL; the manifest, written last, is the commit record.

    There is no rename on object stores, so a torn save leaves `<id>/` without a manifest, which
    `leftovers()` reports. Saves still running in *other* processes look the same: call
    `clean_leftovers` only while no other process is saving to this URL.
    """

    backend: FsspecBackend

    def __init__(self, url: str, *, compression: str = "none", **storage_options: Any) -> None:
        super().__init__(FsspecBackend(url, **storage_options), compression)

    @property
    def fs(self) -> Any:
        return self.backend.fs

    @property
    def root(self) -> str:
        return self.backend.root


class FsspecBackend:
    """An fsspec file system: a checkpoint is its files under `<root>/<id>/`."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec
        import fsspec.implementations.local

        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.root: str = os.path.realpath(root) if self.local else root.rstrip("/")
        self.url = url

    def path(self, entry: str, name: str | None = None) -> str:
        return f"{self.root}/{entry}" + (f"/{name}" if name else "")

    def where(self, entry: str | None = None, name: str | None = None) -> str:
        if entry is None:
            return self.url
        return str(self.fs.unstrip_protocol(self.path(entry, name)))

    def stage(self, ckpt_id: str) -> _FsspecStaged:
        if self.fs.exists(self.path(ckpt_id)):
            raise id_taken(ckpt_id, self.url)
        return _FsspecStaged(self, ckpt_id)

    @contextlib.contextmanager
    def open_read(self, entry: str, name: str) -> Iterator[tuple[BinaryIO, int]]:
        path = self.path(entry, name)
        size = int(self.fs.size(path))
        with self.fs.open(path, "rb") as f:
            yield f, size

    def head(self, entry: str, name: str, n: int) -> bytes:
        return bytes(self.fs.cat_file(self.path(entry, name), start=0, end=n))

    def is_file(self, entry: str, name: str) -> bool:
        return bool(self.fs.exists(self.path(entry, name)))

    def entries(self) -> list[tuple[str, bool]] | None:
        self.fs.invalidate_cache(self.root)
        try:
            if self.fs.isfile(self.root):
                raise ForeignStoreRoot(
                    f"{self.url}: is a file, not a directory; point checkpoints.dir at a directory"
                )
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return None
        return [
            (e["name"].rstrip("/").rsplit("/", 1)[-1], e["type"] == "directory") for e in entries
        ]

    def uncommit(self, ckpt_id: str) -> str:
        """Remove the manifest: what is left is no checkpoint."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(ckpt_id, MANIFEST))
        return ckpt_id

    def size(self, entry: str) -> int:
        return int(self.fs.du(self.path(entry), total=True))

    def remove(self, entry: str) -> None:
        path = self.path(entry)
        if not self.fs.exists(path):
            raise FileNotFoundError(path)
        self.fs.rm(path, recursive=True)

    def write_marker(self, text: bytes) -> None:
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(f"{self.root}/{MARKER}", text)


class _FsspecStaged:
    """Files written in place under `<root>/<id>/`: the manifest is the commit."""

    sync_waits = False

    def __init__(self, backend: FsspecBackend, ckpt_id: str) -> None:
        self._backend = backend
        self._id = ckpt_id
        self.entry = ckpt_id
        self.where = backend.where(ckpt_id)

    def create(self) -> None:
        with writing(self._id, self.where):
            self._backend.fs.makedirs(self._backend.path(self._id), exist_ok=True)

    def open(self, name: str) -> BinaryIO:
        f: BinaryIO = self._backend.fs.open(self._backend.path(self._id, name), "wb")
        return f

    def sync(self, f: BinaryIO) -> None:
        pass  # an object is durable once closed

    def commit(self, manifest: bytes) -> None:
        if not self._backend.local:
            write_manifest(self, self._id, manifest)
            return
        # A local file can be seen half-written; write aside and move, as object stores
        # publish a PUT whole. The temp name is not a checkpoint file, so a crash here leaves
        # a directory without a manifest: a leftover.
        fs, path = self._backend.fs, self._backend.path
        with writing(self._id, f"{self.where}/{MANIFEST}"):
            tmp = path(self._id, f".{MANIFEST}.tmp")
            with fs.open(tmp, "wb") as f:
                hashing.write_all(f, memoryview(manifest))
            fs.mv(tmp, path(self._id, MANIFEST))

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._backend.fs.rm(self._backend.path(self._id), recursive=True)
