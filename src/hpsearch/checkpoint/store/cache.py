"""A local read-through cache of checkpoint files, so that a worker reads a shared parent from a
remote store once, not once per child.

Files live at `<cache dir>/<key of the store>/<id>/<name>`. A file enters the cache only once it
was read whole from the store and its hash matched the manifest, and every read from the cache
is hashed again (a damaged cache file is dropped and read from the store again). Ids are never
reused, so an entry never goes stale; the manifest itself is never cached, so a checkpoint
deleted elsewhere is not loaded from the cache. The cache is bounded: beyond `max_bytes` the
files used least recently go first. Several processes may share one cache directory: files
appear by an atomic rename, and a file evicted under a reader stays readable to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from hpsearch.checkpoint.format import CheckpointInfo, check_id
from hpsearch.checkpoint.store import reading
from hpsearch.checkpoint.store.backend import BlobBackend
from hpsearch.checkpoint.store.local import LocalBackend
from hpsearch.errors import CheckpointError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 << 30
_TMP = ".part-"


def store_key(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """A directory name for one store: the URL and the endpoint it is reached at (the same
    bucket name on two endpoints is two stores), never a credential."""
    options = storage_options or {}
    client = options.get("client_kwargs")
    endpoint = options.get("endpoint_url") or (
        client.get("endpoint_url") if isinstance(client, dict) else None
    )
    text = f"{url.rstrip('/')}\n{endpoint or ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ReadCache:
    """Verified checkpoint files of one store on local disk, at most `max_bytes` of them."""

    def __init__(self, directory: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self._local = LocalBackend(self.root)

    def __repr__(self) -> str:
        return f"ReadCache({self.root!r}, max_bytes={self.max_bytes})"

    def _path(self, ckpt_id: str, name: str | None = None) -> str:
        path = os.path.join(self.root, check_id(ckpt_id))
        return os.path.join(path, name) if name else path

    def read(
        self,
        backend: BlobBackend,
        exists: Callable[[str], bool],
        info: CheckpointInfo,
        name: str,
        read: reading.Reader,
    ) -> tuple[Any, bool]:
        """(what `read` made of the verified file, whether it came from the cache)."""
        path = self._path(info.id, name)
        if os.path.isfile(path):
            try:
                buf = reading.read_verified(self._local, lambda _: True, info, name, read)
            except CheckpointError as e:  # damaged or evicted meanwhile: the store has it
                log.warning("cached file %s is unusable (%s); reading it from the store", path, e)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:
                with contextlib.suppress(OSError):
                    os.utime(path)  # used now: evicted last
                return buf, True
        return self._fetch(backend, exists, info, name, read, path), False

    def _fetch(
        self,
        backend: BlobBackend,
        exists: Callable[[str], bool],
        info: CheckpointInfo,
        name: str,
        read: reading.Reader,
        path: str,
    ) -> Any:
        """Read from the store, writing a copy aside; the copy is kept only if it verified."""
        tmp = f"{path}{_TMP}{os.getpid()}-{secrets.token_hex(4)}"
        out: BinaryIO | None = None
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            out = open(tmp, "xb")  # noqa: SIM115  (closed below, on every path)
        if out is None:  # an unwritable cache costs the cache, never the load
            return reading.read_verified(backend, exists, info, name, read)
        tee = _Tee(out)
        try:
            buf = reading.read_verified(backend, exists, info, name, tee.reader(read))
        except BaseException:
            out.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            out.close()
            if tee.failed:
                raise OSError("writing the copy failed")
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not cache %s: %s", path, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        else:
            self._evict(keep=path)
        return buf

    def drop(self, ckpt_id: str) -> None:
        """Forget a checkpoint (it was deleted through the store)."""
        shutil.rmtree(self._path(ckpt_id), ignore_errors=True)

    def files(self) -> list[tuple[float, int, str]]:
        """(last used, bytes, path) of every cached file."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                for f in os.scandir(entry.path):
                    if _TMP in f.name or not f.is_file(follow_symlinks=False):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = f.stat(follow_symlinks=False)
                        out.append((st.st_mtime, st.st_size, f.path))
        return out

    def nbytes(self) -> int:
        return sum(size for _, size, _ in self.files())

    def _evict(self, keep: str) -> None:
        """Remove the least recently used files until the cache fits `max_bytes` (never
        `keep`, the file just added, even if it alone is larger)."""
        files = sorted(self.files())
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                total -= size
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))  # only once empty


class _Tee:
    """Copies every byte a reader takes from the store into `out`; a failed write stops the
    copying (the cache loses the file) but never the read."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.failed = False

    def _keep(self, data: Any) -> None:
        if self.failed:
            return
        try:
            self.out.write(data)
        except OSError:
            self.failed = True

    def reader(self, read: reading.Reader) -> reading.Reader:
        def teeing(f: BinaryIO, size: int, algo: str, where: str) -> tuple[Any, str, bool]:
            # the readers use only read and readinto, which _TeeFile has
            return read(cast(BinaryIO, _TeeFile(f, self)), size, algo, where)

        return teeing


class _TeeFile:
    """The store's stream as the readers use it (read, readinto), copying what passes."""

    def __init__(self, f: BinaryIO, tee: _Tee) -> None:
        self._f = f
        self._tee = tee

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._tee._keep(data)
        return data

    def readinto(self, view: Any) -> int:
        readinto = getattr(self._f, "readinto", None)
        if readinto is None:
            data = self._f.read(len(view))
            view[: len(data)] = data
            n = len(data)
        else:
            n = int(readinto(view))
        self._tee._keep(memoryview(view)[:n])
        return n
