"""`LocalStore`: checkpoints in a local (or mounted shared) directory, committed by a rename."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.store.backend import MARKER, id_taken, writing
from hpsearch.checkpoint.store.core import StoreCore
from hpsearch.checkpoint.store.protocol import ForeignStoreRoot
from hpsearch.checkpoint.store.writing import write_manifest
from hpsearch.errors import CheckpointError

if TYPE_CHECKING:
    from hpsearch.checkpoint.store.cache import ReadCache  # cache reads through LocalBackend


class LocalStore(StoreCore):
    """Checkpoints in a local (or mounted shared) directory, committed by an atomic rename.

    Save: write `<root>/.tmp-<id>-<pid>/`, fsync every file (manifest last) and the directory,
    rename it to `<root>/<id>`, fsync the root. Delete: rename to `.del-<id>`, then remove.
    A crash at any point leaves either a whole checkpoint or a leftover.

    A `.tmp-*-<pid>` directory counts as a leftover once no process with that pid runs on this
    host (or, for this process's pid, once no save of this process uses it). On a file system
    shared by several hosts, call `clean_leftovers` only while no other host is saving.
    """

    backend: LocalBackend

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        compression: str = "none",
        cache: ReadCache | None = None,
    ) -> None:
        super().__init__(LocalBackend(root), compression, cache=cache)

    @property
    def root(self) -> str:
        return self.backend.root


class LocalBackend:
    """A directory: files are fsynced, saves are renamed into place, deletes renamed away."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.url = os.path.abspath(os.fspath(root))
        # A symlinked root is resolved once: the directory checked here is the one written to,
        # even if the link is pointed elsewhere later.
        self.root = os.path.realpath(self.url)

    def where(self, entry: str | None = None, name: str | None = None) -> str:
        if entry is None:
            return self.root
        path = os.path.join(self.root, entry)
        return os.path.join(path, name) if name else path

    def stage(self, ckpt_id: str) -> _LocalStaged:
        if os.path.lexists(self.where(ckpt_id)):
            raise id_taken(ckpt_id, self.root)
        return _LocalStaged(self, ckpt_id)

    @contextlib.contextmanager
    def open_read(self, entry: str, name: str) -> Iterator[tuple[BinaryIO, int]]:
        with open(self.where(entry, name), "rb", buffering=0) as f:
            yield cast(BinaryIO, f), os.fstat(f.fileno()).st_size

    def is_file(self, entry: str, name: str) -> bool:
        return os.path.isfile(self.where(entry, name))

    def entries(self) -> list[tuple[str, bool]] | None:
        try:
            with os.scandir(self.root) as it:
                return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise ForeignStoreRoot(
                f"{self.url}: is a file, not a directory; point checkpoints.dir at a directory"
            ) from None
        except OSError as e:
            raise CheckpointError(f"{self.url}: cannot be read: {e}") from e

    def uncommit(self, ckpt_id: str) -> str:
        """The atomic rename `<id>` -> `.del-<id>`; returns the entry left to remove."""
        final = self.where(ckpt_id)
        doomed = f".del-{ckpt_id}"
        try:
            os.rename(final, self.where(doomed))
        except FileNotFoundError:
            return doomed  # already gone, or a delete that crashed after renaming
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _remove_tree(self.where(doomed))  # a stale half-delete of an earlier one of this id
            os.rename(final, self.where(doomed))
        _fsync_dir(self.root)
        return doomed

    def busy(self, entry: str) -> bool:
        return False  # saves are staged under .tmp-<id>-<pid>, whose pid tells

    def size(self, entry: str) -> int:
        path = self.where(entry)
        if os.path.islink(path) or not os.path.isdir(path):
            return os.lstat(path).st_size
        total = 0
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_size
        return total

    def remove(self, entry: str) -> None:
        _remove_tree(self.where(entry))

    def write_marker(self, text: bytes) -> None:
        self.make_root()
        path = os.path.join(self.root, MARKER)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return  # another process marked it first
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.root)

    def make_root(self) -> None:
        if not os.path.isdir(self.root):
            os.makedirs(self.root, exist_ok=True)
            _fsync_dir(os.path.dirname(self.root))


class _LocalStaged:
    """`<root>/.tmp-<id>-<pid>/`, renamed to `<root>/<id>` by the commit."""

    sync_waits = True

    def __init__(self, backend: LocalBackend, ckpt_id: str) -> None:
        self._backend = backend
        self._id = ckpt_id
        self.entry = f".tmp-{ckpt_id}-{os.getpid()}"
        self.where = backend.where(self.entry)

    def create(self) -> None:
        with writing(self._id, self._backend.root):
            self._backend.make_root()  # removed behind our back since it was marked
        with writing(self._id, self.where):
            os.mkdir(self.where)

    def open(self, name: str) -> BinaryIO:
        return cast(BinaryIO, open(os.path.join(self.where, name), "xb", buffering=0))

    def sync(self, f: BinaryIO) -> None:
        hashing.fsync(f.fileno())

    def commit(self, manifest: bytes) -> None:
        root, final = self._backend.root, self._backend.where(self._id)
        write_manifest(self, self._id, manifest)
        with writing(self._id, self.where):
            _fsync_dir(self.where)
        with writing(self._id, final):
            os.rename(self.where, final)
        try:
            with writing(self._id, root):
                _fsync_dir(root)
        except BaseException:
            # Renamed but maybe not durable: take it back so a failed save never stays visible.
            with contextlib.suppress(OSError):
                self._backend.remove(self._backend.uncommit(self._id))
            raise

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            _remove_tree(self.where)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hashing.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> None:
    """Remove `path`; a symlink is unlinked, never followed."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)
