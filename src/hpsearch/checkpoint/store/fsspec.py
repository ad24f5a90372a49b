"""`FsspecStore`: checkpoints under any fsspec URL (s3://, gs://, memory://, file://).

Object stores have no rename and no directories (a "directory" is a key prefix), so a save
uploads its data files under `<root>/<id>/` first and the manifest last: the manifest's PUT,
which an object store publishes whole, is the commit. A delete removes the manifest first (one
atomic step, after which nothing can load it; a `.deleting` tombstone goes up just before), then
the rest of the prefix.

A save in place is invisible to other processes only by its missing manifest, so another
worker's upload in flight looks like a torn one: an entry without a manifest counts as a
leftover only once nothing in it is newer than `leftover_grace_s` (default 10 minutes on object
stores; 0 on local file systems, where hpsearch's saves use LocalStore).

Listings are never served from a cache (another worker's saves and deletes must be seen), and
every read is hashed against the manifest, as everywhere.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import MANIFEST
from hpsearch.checkpoint.store.backend import MARKER, NEW_ID_RE, id_taken, writing
from hpsearch.checkpoint.store.cache import ReadCache
from hpsearch.checkpoint.store.core import StoreCore
from hpsearch.checkpoint.store.protocol import ForeignStoreRoot
from hpsearch.errors import CheckpointError

log = logging.getLogger(__name__)

REMOTE_GRACE_S = 600.0
TOMBSTONE = ".deleting"  # in `<id>/` from the start of a delete on; never a checkpoint file


class FsspecStore(StoreCore):
    """Checkpoints under any fsspec URL; the manifest, uploaded last, is the commit record.

    `storage_options` go to fsspec as they are (for s3://: endpoint_url, key, secret,
    client_kwargs, ...); without them s3fs and botocore read the usual AWS environment
    variables and config files. `cache` keeps verified files on local disk (see cache.py).
    """

    backend: FsspecBackend

    def __init__(
        self,
        url: str,
        *,
        compression: str = "none",
        cache: ReadCache | None = None,
        leftover_grace_s: float | None = None,
        **storage_options: Any,
    ) -> None:
        backend = FsspecBackend(url, leftover_grace_s=leftover_grace_s, **storage_options)
        super().__init__(backend, compression, cache=cache)

    @property
    def fs(self) -> Any:
        return self.backend.fs

    @property
    def root(self) -> str:
        return self.backend.root


class FsspecBackend:
    """An fsspec file system: a checkpoint is its files under `<root>/<id>/`."""

    def __init__(
        self, url: str, *, leftover_grace_s: float | None = None, **storage_options: Any
    ) -> None:
        import fsspec
        import fsspec.implementations.local

        options: dict[str, Any] = dict(storage_options)
        # A cached listing would hide another worker's save or delete (s3fs caches `ls`).
        options.setdefault("use_listings_cache", False)
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.root: str = os.path.realpath(root) if self.local else root.rstrip("/")
        self.url = url
        if leftover_grace_s is None:
            leftover_grace_s = 0.0 if self.local else REMOTE_GRACE_S
        self.leftover_grace_s = leftover_grace_s

    def path(self, entry: str, name: str | None = None) -> str:
        return f"{self.root}/{entry}" + (f"/{name}" if name else "")

    def where(self, entry: str | None = None, name: str | None = None) -> str:
        if entry is None:
            return self.url
        return str(self.fs.unstrip_protocol(self.path(entry, name)))

    def _forget(self, path: str) -> None:
        """Drop whatever fsspec cached about `path` (and its parents) before a fresh look."""
        self.fs.invalidate_cache(path)

    def stage(self, ckpt_id: str) -> _FsspecStaged:
        self._forget(self.path(ckpt_id))
        if self.fs.exists(self.path(ckpt_id)):
            raise id_taken(ckpt_id, self.url)
        return _FsspecStaged(self, ckpt_id)

    @contextlib.contextmanager
    def open_read(self, entry: str, name: str) -> Iterator[tuple[BinaryIO, int]]:
        path = self.path(entry, name)
        self._forget(path)
        with self.fs.open(path, "rb") as f:
            size = getattr(f, "size", None)  # an object store's file knows it from its HEAD
            yield f, int(size if isinstance(size, int) else self.fs.size(path))

    def is_file(self, entry: str, name: str) -> bool:
        path = self.path(entry, name)
        self._forget(path)
        return bool(self.fs.isfile(path))

    def entries(self) -> list[tuple[str, bool]] | None:
        self._forget(self.root)
        try:
            # An object store has no directories: a key named like the root does not stop the
            # prefix from holding checkpoints, so only a local file system is asked (2 requests).
            if self.local and self.fs.isfile(self.root):
                raise ForeignStoreRoot(
                    f"{self.url}: is a file, not a directory; point checkpoints.dir at a directory"
                )
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return None
        except ForeignStoreRoot:
            raise
        except Exception as e:  # botocore's errors are no OSError: say where to look
            raise CheckpointError(
                f"{self.url}: cannot be listed ({type(e).__name__}: {e}); check the endpoint "
                "and the credentials (checkpoints.storage_options, or the AWS_* environment "
                "variables for s3://)"
            ) from e
        out = []
        for found in entries:
            name = found["name"].rstrip("/")
            if name == self.root:  # a "folder" object some S3 tools create for a prefix
                continue
            out.append((name.rsplit("/", 1)[-1], found["type"] == "directory"))
        return out

    def uncommit(self, ckpt_id: str) -> str:
        """Remove the manifest: what is left is no checkpoint. A tombstone written first tells
        a delete cut short from a save still uploading (`busy`), so a collector cleans it at
        once. A delete of what is already gone is no error (S3's DELETE is idempotent too)."""
        path = self.path(ckpt_id, MANIFEST)
        self._forget(path)
        if self.fs.isfile(path):
            self.fs.pipe_file(self.path(ckpt_id, TOMBSTONE), b"")
        with contextlib.suppress(FileNotFoundError):
            try:
                self.fs.rm_file(path)
            except NotImplementedError:  # file systems with only the generic rm
                self.fs.rm(path)
        self._forget(path)
        return ckpt_id

    def busy(self, entry: str) -> bool:
        """Whether a save in another process may still be uploading `entry`: it was started,
        or one of its files was written, less than `leftover_grace_s` ago, and it is no delete
        cut short."""
        if self.leftover_grace_s <= 0:
            return False
        newest = _id_time(entry)
        try:
            found = self.fs.find(self.path(entry), detail=True, withdirs=False)
        except OSError:
            found = {}
        for path, info in found.items():
            if path.rstrip("/").rsplit("/", 1)[-1] == TOMBSTONE:
                return False
            newest = max(newest, _modified(info))
        return newest > time.time() - self.leftover_grace_s

    def size(self, entry: str) -> int:
        path = self.path(entry)
        self._forget(path)
        return int(self.fs.du(path, total=True))

    def remove(self, entry: str) -> None:
        path = self.path(entry)
        self._forget(path)
        self._abort_uploads(path)
        if not self.fs.exists(path):
            raise FileNotFoundError(path)
        self.fs.rm(path, recursive=True)
        self._forget(path)

    def _abort_uploads(self, path: str) -> None:
        """Abort S3 multipart uploads under `path` that a killed save left: their parts are
        stored (and billed) but never listed as objects."""
        call = getattr(self.fs, "call_s3", None)
        if call is None or not hasattr(self.fs, "split_path"):
            return
        bucket, key, _ = self.fs.split_path(path)
        try:
            found: Mapping[str, Any] = call(
                "list_multipart_uploads", Bucket=bucket, Prefix=key + "/"
            )
            for up in found.get("Uploads", []):
                call(
                    "abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]
                )
        except Exception as e:  # a store that forbids listing uploads still deletes objects
            log.debug("could not abort multipart uploads under %s: %s", path, e)

    def write_marker(self, text: bytes) -> None:
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(f"{self.root}/{MARKER}", text)


def _id_time(entry: str) -> float:
    """When a save of a generated id started (the id holds its time_ns); 0 for other names."""
    if not NEW_ID_RE.fullmatch(entry):
        return 0.0
    return int(entry.split("-")[1], 16) / 1e9


def _modified(info: Mapping[str, Any]) -> float:
    """A file's modification time from an fsspec info dict (S3: LastModified; local: mtime;
    memory: created), 0 if it has none."""
    for key in ("LastModified", "mtime", "created"):
        value = info.get(key)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


class _FsspecStaged:
    """Files written in place under `<root>/<id>/`: the manifest is the commit."""

    sync_waits = False

    def __init__(self, backend: FsspecBackend, ckpt_id: str) -> None:
        self._backend = backend
        self._id = ckpt_id
        self.entry = ckpt_id
        self.where = backend.where(ckpt_id)

    def create(self) -> None:
        if not self._backend.local:
            return  # an object store has no directories: the first upload makes the prefix
        with writing(self._id, self.where):
            self._backend.fs.makedirs(self._backend.path(self._id), exist_ok=True)

    def open(self, name: str) -> BinaryIO:
        f: BinaryIO = self._backend.fs.open(self._backend.path(self._id, name), "wb")
        return f

    def sync(self, f: BinaryIO) -> None:
        pass  # an object is durable once closed (its upload completed)

    def commit(self, manifest: bytes) -> None:
        fs, path = self._backend.fs, self._backend.path
        if not self._backend.local:
            # One PUT, published whole: before it the checkpoint does not exist, after it it
            # does. pipe_file never starts a multipart upload for a manifest's size.
            with writing(self._id, f"{self.where}/{MANIFEST}"):
                fs.pipe_file(path(self._id, MANIFEST), manifest)
            return
        # A local file can be seen half-written; write aside and move, as object stores
        # publish a PUT whole. The temp name is not a checkpoint file, so a crash here leaves
        # a directory without a manifest: a leftover.
        with writing(self._id, f"{self.where}/{MANIFEST}"):
            tmp = path(self._id, f".{MANIFEST}.tmp")
            with fs.open(tmp, "wb") as f:
                hashing.write_all(f, memoryview(manifest))
            fs.mv(tmp, path(self._id, MANIFEST))

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._backend.remove(self._id)
