"""The shipped StoreTestCase over every store backend there is: a local directory (also through
the read-through cache), memory, and fsspec on memory://, on file:// and on s3:// (moto's server
on loopback)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from hpsearch.checkpoint import FsspecStore, LocalStore, MemoryStore, ReadCache
from hpsearch.checkpoint.store import CheckpointStore
from hpsearch.testing.conformance.store import StoreTestCase
from s3server import S3, s3  # noqa: F401  (the session fixture)

Change = Callable[[bytes], "bytes | None"]


class TestLocalStore(StoreTestCase):
    def make_store(self, tmp_path: Path, compression: str = "none") -> CheckpointStore:
        return LocalStore(tmp_path / "ck", compression=compression)

    def reopen(self, store: CheckpointStore, compression: str = "none") -> CheckpointStore:
        assert isinstance(store, LocalStore)
        return LocalStore(store.url, compression=compression)

    def damage_file(self, store: CheckpointStore, ckpt_id: str, name: str, change: Change) -> None:
        assert isinstance(store, LocalStore)
        path = os.path.join(store.root, ckpt_id, name)
        with open(path, "rb") as f:
            data = change(f.read())
        if data is None:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(data)

    def put_foreign(self, store: CheckpointStore, path: str, data: bytes) -> None:
        assert isinstance(store, LocalStore)
        full = os.path.join(store.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)

    def read_foreign(self, store: CheckpointStore, path: str) -> bytes | None:
        assert isinstance(store, LocalStore)
        try:
            with open(os.path.join(store.root, path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


class TestCachedLocalStore(TestLocalStore):
    """Every promise holds through the read-through cache too (loads go through it)."""

    def make_store(self, tmp_path: Path, compression: str = "none") -> CheckpointStore:
        cache = ReadCache(str(tmp_path / "cache"))
        return LocalStore(tmp_path / "ck", compression=compression, cache=cache)

    def reopen(self, store: CheckpointStore, compression: str = "none") -> CheckpointStore:
        assert isinstance(store, LocalStore) and store.cache is not None
        return LocalStore(store.url, compression=compression, cache=store.cache)


class TestMemoryStore(StoreTestCase):
    def make_store(self, tmp_path: Path, compression: str = "none") -> CheckpointStore:
        return MemoryStore(compression=compression)

    def reopen(self, store: CheckpointStore, compression: str = "none") -> CheckpointStore:
        assert isinstance(store, MemoryStore)
        return MemoryStore(store.blobs, compression=compression)

    def damage_file(self, store: CheckpointStore, ckpt_id: str, name: str, change: Change) -> None:
        assert isinstance(store, MemoryStore)
        files = store.blobs.dirs[ckpt_id]
        data = change(files[name])
        if data is None:
            del files[name]
        else:
            files[name] = data

    def put_foreign(self, store: CheckpointStore, path: str, data: bytes) -> None:
        assert isinstance(store, MemoryStore)
        entry, name = path.split("/")
        store.blobs.exists = True
        store.blobs.dirs.setdefault(entry, {})[name] = data

    def read_foreign(self, store: CheckpointStore, path: str) -> bytes | None:
        assert isinstance(store, MemoryStore)
        entry, name = path.split("/")
        return store.blobs.dirs.get(entry, {}).get(name)


class FsspecCase(StoreTestCase):
    """fsspec stores save in place: another process's upload in flight looks torn for
    `leftover_grace_s` (tests/test_s3.py checks that); the suite's torn saves are taken as torn
    at once."""

    def reopen(self, store: CheckpointStore, compression: str = "none") -> CheckpointStore:
        assert isinstance(store, FsspecStore)
        return FsspecStore(store.url, compression=compression, leftover_grace_s=0)

    def damage_file(self, store: CheckpointStore, ckpt_id: str, name: str, change: Change) -> None:
        assert isinstance(store, FsspecStore)
        path = f"{store.root}/{ckpt_id}/{name}"
        data = change(bytes(store.fs.cat_file(path)))
        if data is None:
            store.fs.rm_file(path)
        else:
            store.fs.pipe_file(path, data)

    def put_foreign(self, store: CheckpointStore, path: str, data: bytes) -> None:
        assert isinstance(store, FsspecStore)
        full = f"{store.root}/{path}"
        store.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
        store.fs.pipe_file(full, data)

    def read_foreign(self, store: CheckpointStore, path: str) -> bytes | None:
        assert isinstance(store, FsspecStore)
        try:
            return bytes(store.fs.cat_file(f"{store.root}/{path}"))
        except FileNotFoundError:
            return None


class TestFsspecMemoryStore(FsspecCase):
    def make_store(self, tmp_path: Path, compression: str = "none") -> CheckpointStore:
        url = f"memory://hpsearch-conf-{uuid.uuid4().hex}"
        return FsspecStore(url, compression=compression, leftover_grace_s=0)

    def close_store(self, store: CheckpointStore) -> None:
        assert isinstance(store, FsspecStore)
        if store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)  # memory:// is process-wide


class TestFsspecFileStore(FsspecCase):
    def make_store(self, tmp_path: Path, compression: str = "none") -> CheckpointStore:
        return FsspecStore(f"file://{tmp_path}/fs-ck", compression=compression)


class TestS3Store(FsspecCase):
    """s3:// through s3fs on moto's server (tests/s3server.py): no rename, no directories, the
    manifest is the commit; credentials and endpoint come from the AWS environment variables."""

    @pytest.fixture(autouse=True)
    def _server(self, s3: S3) -> None:  # noqa: F811  (the fixture by its name)
        self.s3 = s3

    def make_store(self, tmp_path: Path, compression: str = "none") -> CheckpointStore:
        return FsspecStore(self.s3.url("conf"), compression=compression, leftover_grace_s=0)
