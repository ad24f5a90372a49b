"""Checkpoint stores: where checkpoints are committed, listed, loaded, verified and deleted.

A checkpoint is a directory `<root>/<id>/` holding one safetensors file per tensor group,
`state.json` and `manifest.json`. The manifest is written last and is the commit record: a
directory without one is not a checkpoint, only a leftover. Loads hash every file they read and
compare with the manifest before a single tensor is returned.

Two backends share every rule but the commit:

- `LocalStore` (a directory): files are written into `.tmp-<id>-<pid>/`, fsynced, and the
  directory is renamed to `<id>`; delete renames to `.del-<id>` (an atomic uncommit) and then
  removes it. A crash at any point leaves either a whole checkpoint or a leftover.
- `FsspecStore` (any fsspec URL: memory://, s3://, gs://, file://): object stores have no rename,
  so data files are written in place and the manifest, written last, commits; delete removes the
  manifest first.

Ids and file names are checked against fixed patterns before they become paths, so nothing is
ever written or deleted outside the store's root.

The root is marked as hpsearch's by a small file, `.hpsearch-store`, written when the store first
writes there. A non-empty root without the mark is refused (ForeignStoreRoot), unless everything
in it is an hpsearch checkpoint (a root of an hpsearch from before the mark: adopted and marked).
Even in a marked root only names hpsearch itself generates are ever deleted as leftovers.

Reading a compressed file never allocates more than its safetensors header declares, and a store
decompresses only the codec it was opened with (a 'none' store refuses zstd checkpoints).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import torch

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import (
    COMPRESSIONS,
    FORMAT,
    ID_RE,
    MANIFEST,
    STATE,
    CheckpointInfo,
    FilePlan,
    check_id,
    check_tensors,
    data_file_name,
    decode_manifest,
    decode_state,
    encode_manifest,
    encode_state,
    group_of,
    parse_file,
    plan_file,
    read_file,
)
from hpsearch.checkpoint.procs import pid_alive
from hpsearch.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointWriteError,
    UsageError,
)

log = logging.getLogger(__name__)

_TMP_RE = re.compile(r"\.tmp-(?P<id>" + ID_RE.pattern + r")-(?P<pid>[0-9]+)")
_DEL_RE = re.compile(r"\.del-(?P<id>" + ID_RE.pattern + r")")
_MAX_MANIFEST = 64 << 20
# Exactly the ids new_id() makes: the only checkpoint directories a cleanup may ever remove.
NEW_ID_RE = re.compile(r"ck-[0-9a-f]{1,16}-[0-9a-f]{8}")
# The file that marks a root as hpsearch's; its first line names the layout.
MARKER = ".hpsearch-store"
_MARKER_TEXT = (
    b"hpsearch-store 1\n"
    b"This directory holds hpsearch checkpoints. hpsearch deletes the checkpoints and torn saves\n"
    b"it wrote here (ck-<hex>-<hex>, .tmp-*, .del-*) and nothing else.\n"
)

# How a backend lends its files to the shared writing code (`_StoreBase._write_files`):
_OpenNew = Callable[[str], Any]  # file name -> a new binary file, opened for writing
_Sync = Callable[[Any], None]  # make an open file durable (a no-op where there is no fsync)
_WriteFiles = Callable[[_OpenNew, _Sync, str], "CheckpointInfo"]  # (open, sync, where shown)

# Saves in progress in this process (temp paths), shared by every store instance, so that
# leftovers() never reports a save that is still running here.
_INFLIGHT: set[str] = set()
_INFLIGHT_LOCK = threading.Lock()


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint: its manifest, its tensors (CPU, per group) and its state dict."""

    info: CheckpointInfo
    tensors: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]


class ForeignStoreRoot(UsageError):
    """The checkpoint root holds files hpsearch did not write, so it is not used at all."""


class CheckpointStore(Protocol):
    """What every checkpoint store does; `tests/test_checkpoint_store.py` checks each backend.

    Rules every implementation keeps:

    - `save` is atomic: afterwards the checkpoint is either fully committed or absent; a failure
      raises CheckpointWriteError and leaves earlier checkpoints untouched.
    - `load` and `verify` compare every file with the manifest (size and hash) before anything is
      returned; a mismatch raises CheckpointCorrupt naming the file.
    - `list`, `info`, `exists` and `load` see committed checkpoints only.
    - `delete` uncommits first, so a crash mid-delete never leaves something loadable.
    - ids are checked wherever they become paths; nothing outside the root is touched.
    - the root is ours only if empty, marked (`.hpsearch-store`) or all hpsearch checkpoints;
      otherwise the store raises ForeignStoreRoot when opened. Cleanups remove only names
      hpsearch generates.
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


@contextlib.contextmanager
def _writing(ckpt_id: str, path: str) -> Iterator[None]:
    """Turn an OSError while writing `path` into a CheckpointWriteError that names both."""
    try:
        yield
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise CheckpointWriteError(
            f"saving checkpoint {ckpt_id} failed writing {path}: {why}"
            + (f" [errno {e.errno}]" if e.errno else "")
        ) from e


class _StoreBase:
    """Everything but the file system: validation, layout, hashing, the manifest, parsing.

    Subclasses provide the commit and the few file operations below.
    """

    url: str
    # Whether sync() waits for the disk, so hashing can hide behind it (see _write_files).
    _hash_in_sync = False

    def __init__(self, compression: str) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if compression == "zstd":
            hashing.zstd_module()  # fail now, not at the first save
        self.compression = compression
        self._marked = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, compression={self.compression!r})"

    # -- backend primitives -----------------------------------------------------------------

    def _where(self, ckpt_id: str, name: str | None = None) -> str:
        raise NotImplementedError

    def _commit(self, ckpt_id: str, write: _WriteFiles) -> CheckpointInfo:
        raise NotImplementedError

    def _read_small(self, ckpt_id: str, name: str) -> bytes:
        raise NotImplementedError

    def exists(self, ckpt_id: str) -> bool:
        raise NotImplementedError

    @contextlib.contextmanager
    def _open_read(self, ckpt_id: str, name: str) -> Iterator[tuple[BinaryIO, int]]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _entries(self) -> builtins.list[tuple[str, bool]] | None:
        """(name, is a directory) of each entry of the root; None if the root does not exist."""
        raise NotImplementedError

    def _head(self, ckpt_id: str, name: str, n: int) -> bytes:
        """The first `n` bytes of a file (FileNotFoundError if absent)."""
        raise NotImplementedError

    def _write_marker(self) -> None:
        raise NotImplementedError

    # -- whose root is this? ----------------------------------------------------------------

    def _check_root(self, *, claim: bool, saving: bool = False) -> None:
        """Refuse a root that holds what hpsearch did not write; with `claim`, mark it ours.

        Called when the store is opened (claim=False: nothing is written by a read-only
        command) and before the first save, delete or cleanup (claim=True); only a save
        (`saving`) creates a root that does not exist yet.
        """
        if self._marked:
            return
        entries = self._entries()
        if entries is None:
            if saving:  # the first save creates the root, and marks it before anything else
                self._write_marker()
                self._marked = True
            return
        if any(name == MARKER for name, _ in entries):
            self._marked = True
            return
        foreign = sorted(name for name, is_dir in entries if not self._ours(name, is_dir))
        if foreign:
            raise ForeignStoreRoot(_foreign_message(self.url, foreign))
        if claim:
            self._write_marker()  # empty, or an older hpsearch's root: adopt it
            self._marked = True
            if entries:
                log.info("adopted %s (%d hpsearch entries) and marked it", self.url, len(entries))

    def _ours(self, name: str, is_dir: bool) -> bool:
        """Whether a root entry is one hpsearch writes (used to adopt an unmarked root)."""
        if _TMP_RE.fullmatch(name) or _DEL_RE.fullmatch(name):
            return True
        if not is_dir or not ID_RE.fullmatch(name):
            return False
        if NEW_ID_RE.fullmatch(name):
            return True
        # An id given to save(ckpt_id=...): ours if it holds one of our manifests.
        try:
            return b'"format": "' + FORMAT.encode() + b'"' in self._head(name, MANIFEST, 4096)
        except OSError:
            return False

    # -- the protocol -----------------------------------------------------------------------

    def new_id(self) -> str:
        return f"ck-{time.time_ns():x}-{secrets.token_hex(4)}"

    def save(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        state: Mapping[str, Any],
        *,
        meta: Mapping[str, Any] | None = None,
        ckpt_id: str | None = None,
    ) -> CheckpointInfo:
        """Commit a new checkpoint and return its info.

        Everything is checked before a byte is written (names, dtypes, JSON-ability); each
        tensor is then streamed straight from its memory while it is hashed. `ckpt_id` defaults
        to `new_id()`; an id that exists already is refused (ids are never reused).
        """
        check_tensors(tensors)
        state_bytes = encode_state(state)
        meta = dict(meta or {})
        try:
            json.dumps(meta, allow_nan=True)
        except (TypeError, ValueError) as e:
            raise TypeError(f"meta is not JSON-serializable: {e}") from e
        ckpt_id = check_id(ckpt_id) if ckpt_id is not None else self.new_id()
        plans = {data_file_name(g, self.compression): plan_file(t) for g, t in tensors.items()}
        created = time.time()

        def write(open_new: _OpenNew, sync: _Sync, where: str) -> CheckpointInfo:
            return self._write_files(
                ckpt_id, plans, state_bytes, meta, created, open_new, sync, where
            )

        return self._commit(ckpt_id, write)

    def _write_files(
        self,
        ckpt_id: str,
        plans: Mapping[str, FilePlan],
        state_bytes: bytes,
        meta: dict[str, Any],
        created: float,
        open_new: _OpenNew,
        sync: _Sync,
        where: str,
    ) -> CheckpointInfo:
        """Write the data files and state, wait until all are synced, then write the manifest.

        Each file is synced (and closed) in a background thread while the next one is written,
        so the disk's work overlaps the CPU's. Uncompressed files on a store that syncs are
        hashed from the same memory during their own fsync, when the CPU is otherwise idle;
        elsewhere bytes are hashed while they stream out.
        """
        files: dict[str, tuple[int, str]] = {}
        syncing: list[tuple[str, Future[None]]] = []

        def sync_close(f: Any) -> None:
            try:
                sync(f)
            finally:
                f.close()

        with ThreadPoolExecutor(4, thread_name_prefix="hpsearch-sync") as pool:
            for name, plan in [*plans.items(), (STATE, None)]:
                path = f"{where}/{name}"
                with _writing(ckpt_id, path):
                    f = open_new(name)
                    try:
                        if plan is not None and self.compression == "none" and self._hash_in_sync:
                            views = [memoryview(plan.header), *plan.parts]
                            for v in views:
                                hashing.write_all(f, v)
                            done = pool.submit(sync_close, f)
                            files[name] = (plan.size, hashing.hash_views(views))
                        else:
                            with hashing.HashingWriter(f) as w:
                                if plan is None:
                                    w.write(state_bytes)
                                elif self.compression == "zstd":
                                    z = hashing.zstd_writer(w, plan.size)
                                    _stream(z, plan)
                                    z.close()
                                else:
                                    _stream(w, plan)
                                files[name] = w.finish()
                            done = pool.submit(sync_close, f)
                    except BaseException:
                        f.close()
                        raise
                syncing.append((path, done))
            for path, done in syncing:
                with _writing(ckpt_id, path):
                    done.result()
        info = CheckpointInfo(
            id=ckpt_id, meta=meta, files=files, created=created, compression=self.compression
        )
        manifest = encode_manifest(info, hashing.HASHERS[info.hash])
        with _writing(ckpt_id, f"{where}/{MANIFEST}"):
            self._write_manifest(ckpt_id, manifest, open_new, sync)
        return info

    def _write_manifest(
        self,
        ckpt_id: str,
        data: bytes,
        open_new: _OpenNew,
        sync: _Sync,
    ) -> None:
        f = open_new(MANIFEST)
        try:
            hashing.write_all(f, memoryview(data))
            sync(f)
        finally:
            f.close()

    def info(self, ckpt_id: str) -> CheckpointInfo:
        """The checkpoint's validated manifest (CheckpointNotFound if it is not committed)."""
        check_id(ckpt_id)
        try:
            raw = self._read_small(ckpt_id, MANIFEST)
        except FileNotFoundError:
            raise CheckpointNotFound(
                f"no checkpoint {ckpt_id!r} in {self.url} (a directory without "
                f"{MANIFEST} is not a checkpoint)"
            ) from None
        except OSError as e:
            raise CheckpointError(f"{self._where(ckpt_id, MANIFEST)}: cannot be read: {e}") from e
        except MemoryError:
            raise CheckpointCorrupt(_no_memory(self._where(ckpt_id, MANIFEST), None)) from None
        return decode_manifest(raw, ckpt_id, self._where(ckpt_id, MANIFEST), hashing.HASHERS)

    def load(self, ckpt_id: str, *, groups: Sequence[str] | None = None) -> LoadedCheckpoint:
        """Load a checkpoint: every file read is hashed and checked before any tensor exists.

        Each tensor is read straight from the file into an allocation of its own (no copy after
        the read, peak memory the tensors' bytes), and handed out only once the whole file's
        hash matched. `groups` limits which tensor groups are read; asking for one that was not
        saved raises CheckpointMismatch.
        """
        info = self.info(ckpt_id)
        self._check_codec(info)
        by_group = {g: n for n in info.files if (g := group_of(n)) is not None}
        if isinstance(groups, str):
            groups = [groups]
        wanted = sorted(by_group) if groups is None else list(dict.fromkeys(groups))
        missing = [g for g in wanted if g not in by_group]
        if missing:
            raise CheckpointMismatch(
                f"checkpoint {ckpt_id} has no tensor group(s) {missing}; it has {sorted(by_group)}"
            )
        raw_state = self._read_verified(info, STATE)
        if info.compression == "zstd":
            tensors = {g: self._parse(info, by_group[g], self._read_verified(info, by_group[g]))
                       for g in wanted}  # fmt: skip
        else:
            tensors = {g: self._read_verified(info, by_group[g], _read_tensors) for g in wanted}
        state = decode_state(bytes(raw_state.numpy()), self._where(ckpt_id, STATE))
        return LoadedCheckpoint(info=info, tensors=tensors, state=state)

    def verify(self, ckpt_id: str) -> CheckpointInfo:
        """Re-read, re-hash and re-parse every file, one at a time (memory: the largest file)."""
        info = self.info(ckpt_id)
        self._check_codec(info)
        for name in sorted(info.files):
            buf = self._read_verified(info, name)
            if name == STATE:
                decode_state(bytes(buf.numpy()), self._where(ckpt_id, STATE))
            else:
                self._parse(info, name, buf)
        return info

    def _check_codec(self, info: CheckpointInfo) -> None:
        """Decompress only what the study chose: the codec is named by the checkpoint itself,
        and a manifest is no trust boundary (its hash has no key)."""
        if info.compression != "none" and info.compression != self.compression:
            raise CheckpointFormatError(
                f"{self._where(info.id)}: compressed with {info.compression}, but this store "
                f"was opened with compression {self.compression!r}; hpsearch decompresses only "
                f"the codec the study configured. If this study wrote it, set "
                f"checkpoints.compression: {info.compression}"
            )

    def _read_verified(
        self, info: CheckpointInfo, name: str, read: Callable[..., Any] = hashing.read_hashed
    ) -> Any:
        """Read one file with `read(f, size, algo, where) -> (what was read, digest, exact)` and
        return what was read only if its size and hash match the manifest."""
        size, digest = info.files[name]
        where = self._where(info.id, name)
        try:
            with self._open_read(info.id, name) as (f, actual):
                if actual != size:
                    raise CheckpointCorrupt(
                        f"{where}: {actual} bytes, but the manifest says {size} "
                        f"({'truncated' if actual < size else 'bytes appended'})"
                    )
                buf, got, exact = read(f, size, info.hash, where)
        except FileNotFoundError:
            if not self.exists(info.id):
                raise CheckpointNotFound(
                    f"checkpoint {info.id} was deleted while being read"
                ) from None
            raise CheckpointCorrupt(f"{where}: missing, but listed in the manifest") from None
        except OSError as e:
            raise CheckpointError(f"{where}: cannot be read: {e}") from e
        except MemoryError:
            raise CheckpointCorrupt(_no_memory(where, size)) from None
        if not exact:
            raise CheckpointCorrupt(f"{where}: changed size while being read")
        if got != digest:
            raise CheckpointCorrupt(
                f"{where}: content does not match the manifest's {info.hash} hash "
                f"(expected {digest[:16]}…, got {got[:16]}…): the file is corrupted"
            )
        return buf

    def _parse(self, info: CheckpointInfo, name: str, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        where = self._where(info.id, name)
        try:
            if info.compression == "zstd":
                return _decompress_safetensors(buf, where)
            return parse_file(buf, where)
        except MemoryError:
            raise CheckpointCorrupt(_no_memory(where, None)) from None

    def list(self) -> list[CheckpointInfo]:
        """Committed checkpoints sorted by creation time (then id).

        A checkpoint whose manifest cannot be read or is invalid is logged and left out, so one
        bad entry never hides the others.
        """
        out = []
        for ckpt_id in self._candidate_ids():
            try:
                out.append(self.info(ckpt_id))
            except CheckpointNotFound:
                continue  # not committed, or deleted meanwhile
            except (CheckpointCorrupt, CheckpointFormatError, CheckpointError) as e:
                log.warning("skipping checkpoint %s: %s", ckpt_id, e)
        return sorted(out, key=lambda i: (i.created, i.id))

    def _candidate_ids(self) -> builtins.list[str]:
        raise NotImplementedError


def _decompress_safetensors(stored: torch.Tensor, where: str) -> dict[str, torch.Tensor]:
    """Decompress one zstd-framed safetensors file straight into its tensors, allocating only
    what its header declares.

    The header (length, then JSON) is decompressed first and bounds everything after it; a
    frame that declares another size, or holds more or less than the header says, is corrupt.
    So a small file that would decompress to gigabytes costs only what its header declares.
    """
    try:
        with hashing.zstd_frame(stored) as (declared, r):
            tensors = read_file(r.readinto, declared if declared >= 0 else None, where)
            if r.read(1):
                raise ValueError("the zstd frame holds more than its safetensors header declares")
    except ValueError as e:
        raise CheckpointCorrupt(f"{where}: {e}") from None
    return tensors


def _read_tensors(
    f: BinaryIO, size: int, algo: str, where: str
) -> tuple[dict[str, torch.Tensor], str, bool]:
    """Read a `size`-byte safetensors file into one allocation per tensor, hashing while
    reading (in a second thread, in order): (tensors, hex digest, exact). The caller must not
    use the tensors unless `exact` and the digest matches."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    hasher = hashing.new_hasher(algo)
    readinto = getattr(f, "readinto", None)

    def fill(view: memoryview) -> int:
        if readinto is not None:
            return int(readinto(view))
        data = f.read(len(view))
        view[: len(data)] = data
        return len(data)

    with ThreadPoolExecutor(1, thread_name_prefix="hpsearch-hash") as pool:
        pending: list[Future[None]] = []
        try:
            tensors = read_file(
                fill, size, where, lambda v: pending.append(pool.submit(hasher.update, v))
            )
        finally:
            for p in pending:
                p.result()
    return tensors, hasher.hexdigest(), not f.read(1)


def _no_memory(where: str, size: int | None) -> str:
    what = f"{size} bytes" if size is not None else "it"
    return (
        f"{where}: not enough memory to read {what}; treated as unreadable (a checkpoint "
        "larger than this machine can hold is not usable here)"
    )


def _foreign_message(url: str, foreign: Sequence[str]) -> str:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return (
        f"{url}: this directory holds files hpsearch did not write ({shown}). hpsearch removes "
        "torn saves from its checkpoint directory, so it does not use one that holds anything "
        "else. Point checkpoints.dir at an empty or new directory (checkpoints go to "
        "<checkpoints.dir>/<study name>), or move those entries away. A directory of an older "
        "hpsearch that holds only its checkpoints is adopted automatically; to adopt this one "
        f"as it is, create the file {MARKER} in it (hpsearch then deletes only names it "
        "generates there)."
    )


def _stream(out: Any, plan: FilePlan) -> None:
    out.write(plan.header)
    for part in plan.parts:
        out.write(part)


def _inflight(key: str, add: bool) -> None:
    with _INFLIGHT_LOCK:
        if add:
            _INFLIGHT.add(key)
        else:
            _INFLIGHT.discard(key)


def _is_inflight(key: str) -> bool:
    with _INFLIGHT_LOCK:
        return key in _INFLIGHT


# =============================================================================================


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hashing.fsync(fd)
    finally:
        os.close(fd)


def _tree_size(path: str) -> int:
    if os.path.islink(path) or not os.path.isdir(path):
        return os.lstat(path).st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _remove_tree(path: str) -> None:
    """Remove `path`; a symlink is unlinked, never followed."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


class LocalStore(_StoreBase):
    """Checkpoints in a local (or mounted shared) directory, committed by an atomic rename.

    Save: write `<root>/.tmp-<id>-<pid>/`, fsync every file (manifest last) and the directory,
    rename it to `<root>/<id>`, fsync the root. Delete: rename to `.del-<id>`, then remove.

    A `.tmp-*-<pid>` directory counts as a leftover once no process with that pid runs on this
    host (or, for this process's pid, once no save of this process uses it). On a file system
    shared by several hosts, call `clean_leftovers` only while no other host is saving.
    """

    _hash_in_sync = True

    def __init__(self, root: str | os.PathLike[str], *, compression: str = "none") -> None:
        super().__init__(compression)
        self.url = os.path.abspath(os.fspath(root))
        # A symlinked root is resolved once: the directory checked here is the one written to,
        # even if the link is pointed elsewhere later.
        self.root = os.path.realpath(self.url)
        self._check_root(claim=False)

    def _where(self, ckpt_id: str, name: str | None = None) -> str:
        path = os.path.join(self.root, ckpt_id)
        return os.path.join(path, name) if name else path

    def _commit(self, ckpt_id: str, write: _WriteFiles) -> CheckpointInfo:
        final = os.path.join(self.root, ckpt_id)
        tmp = os.path.join(self.root, f".tmp-{ckpt_id}-{os.getpid()}")
        with _writing(ckpt_id, self.root):
            if not os.path.isdir(self.root):
                os.makedirs(self.root, exist_ok=True)
                _fsync_dir(os.path.dirname(self.root))
            self._check_root(claim=True, saving=True)  # marked before any temp directory
        if os.path.lexists(final):
            raise CheckpointWriteError(
                f"checkpoint {ckpt_id} already exists in {self.root}; ids are never reused"
            )
        _inflight(tmp, True)
        try:
            with _writing(ckpt_id, tmp):
                os.mkdir(tmp)
            try:
                info = write(
                    lambda name: open(os.path.join(tmp, name), "xb", buffering=0),  # noqa: SIM115
                    lambda f: hashing.fsync(f.fileno()),
                    tmp,
                )
                with _writing(ckpt_id, tmp):
                    _fsync_dir(tmp)
                with _writing(ckpt_id, final):
                    os.rename(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    _remove_tree(tmp)
                raise
        finally:
            _inflight(tmp, False)
        try:
            with _writing(ckpt_id, self.root):
                _fsync_dir(self.root)
        except BaseException:
            # Renamed but maybe not durable: take it back so a failed save never stays visible.
            with contextlib.suppress(OSError):
                self.delete(ckpt_id)
            raise
        return info

    def _read_small(self, ckpt_id: str, name: str) -> bytes:
        with open(self._where(ckpt_id, name), "rb") as f:
            # read(n) allocates n bytes up front: ask for what the file holds, not the limit
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, _MAX_MANIFEST) + 1)
        if len(data) > _MAX_MANIFEST:
            raise CheckpointCorrupt(f"{self._where(ckpt_id, name)}: implausibly large")
        return data

    @contextlib.contextmanager
    def _open_read(self, ckpt_id: str, name: str) -> Iterator[tuple[BinaryIO, int]]:
        with open(self._where(ckpt_id, name), "rb", buffering=0) as f:
            yield f, os.fstat(f.fileno()).st_size  # type: ignore[misc]

    def _entries(self) -> list[tuple[str, bool]] | None:
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

    def _head(self, ckpt_id: str, name: str, n: int) -> bytes:
        path = self._where(ckpt_id, name)
        if os.path.islink(path):
            return b""
        with open(path, "rb") as f:
            return f.read(n)

    def _write_marker(self) -> None:
        path = os.path.join(self.root, MARKER)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return  # another process marked it first
        try:
            view = memoryview(_MARKER_TEXT)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.root)

    def _id_dirs(self) -> list[str]:
        """Entries of the root named like an id that are directories (a symlink is not)."""
        try:
            with os.scandir(self.root) as it:
                return [
                    e.name
                    for e in it
                    if ID_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
                ]
        except FileNotFoundError:
            return []

    def _candidate_ids(self) -> list[str]:
        return self._id_dirs()

    def exists(self, ckpt_id: str) -> bool:
        return os.path.isfile(self._where(check_id(ckpt_id), MANIFEST))

    def delete(self, ckpt_id: str) -> None:
        """Rename `<id>` to `.del-<id>` (after which nothing can load it), then remove it."""
        check_id(ckpt_id)
        self._check_root(claim=True)
        doomed = self._uncommit(ckpt_id)
        if os.path.lexists(doomed):
            _remove_tree(doomed)

    def _uncommit(self, ckpt_id: str) -> str:
        """First half of delete: the atomic rename. Returns the path left to remove."""
        final = os.path.join(self.root, ckpt_id)
        doomed = os.path.join(self.root, f".del-{ckpt_id}")
        try:
            os.rename(final, doomed)
        except FileNotFoundError:
            return doomed  # already gone, or a delete that crashed after renaming
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _remove_tree(doomed)  # a stale half-delete of an earlier checkpoint with this id
            os.rename(final, doomed)
        _fsync_dir(self.root)
        return doomed

    def leftovers(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        # An id directory without a manifest is never made by a save here (saves are renamed
        # into place whole): it is damage from outside, and as dead as a torn save; but only
        # a name new_id() makes is ours to remove.
        out = [
            n
            for n in self._id_dirs()
            if NEW_ID_RE.fullmatch(n) and not os.path.lexists(self._where(n, MANIFEST))
        ]
        for name in names:
            if _DEL_RE.fullmatch(name):
                out.append(name)
            elif m := _TMP_RE.fullmatch(name):
                pid = int(m.group("pid"))
                path = os.path.join(self.root, name)
                running = _is_inflight(path) if pid == os.getpid() else pid_alive(pid)
                if not running:
                    out.append(name)
        return sorted(out)

    def clean_leftovers(self) -> int:
        self._check_root(claim=True)
        freed = 0
        for name in self.leftovers():
            path = os.path.join(self.root, name)
            with contextlib.suppress(FileNotFoundError):
                size = _tree_size(path)
                _remove_tree(path)
                freed += size
        return freed


# =============================================================================================


class FsspecStore(_StoreBase):
    """Checkpoints under any fsspec URL; the manifest, written last, is the commit record.

    There is no rename on object stores, so a torn save leaves `<id>/` without a manifest, which
    `leftovers()` reports. Saves still running in *other* processes look the same: call
    `clean_leftovers` only while no other process is saving to this URL.
    """

    def __init__(self, url: str, *, compression: str = "none", **storage_options: Any) -> None:
        import fsspec
        import fsspec.implementations.local

        super().__init__(compression)
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self._local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.root = os.path.realpath(root) if self._local else root.rstrip("/")
        self.url = url
        self._check_root(claim=False)

    def _path(self, ckpt_id: str, name: str | None = None) -> str:
        return f"{self.root}/{ckpt_id}" + (f"/{name}" if name else "")

    def _where(self, ckpt_id: str, name: str | None = None) -> str:
        return str(self.fs.unstrip_protocol(self._path(ckpt_id, name)))

    def _commit(self, ckpt_id: str, write: _WriteFiles) -> CheckpointInfo:
        d = self._path(ckpt_id)
        if self.fs.exists(d):
            raise CheckpointWriteError(
                f"checkpoint {ckpt_id} already exists in {self.url}; ids are never reused"
            )
        with _writing(ckpt_id, self.url):
            self._check_root(claim=True, saving=True)
        _inflight(self._where(ckpt_id), True)
        try:
            with _writing(ckpt_id, self._where(ckpt_id)):
                self.fs.makedirs(d, exist_ok=True)
            return write(
                lambda name: self.fs.open(f"{d}/{name}", "wb"), lambda f: None, self._where(ckpt_id)
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(d, recursive=True)
            raise
        finally:
            _inflight(self._where(ckpt_id), False)

    def _write_manifest(
        self,
        ckpt_id: str,
        data: bytes,
        open_new: _OpenNew,
        sync: _Sync,
    ) -> None:
        if not self._local:
            super()._write_manifest(ckpt_id, data, open_new, sync)
            return
        # A local file can be seen half-written; write aside and rename, as object stores
        # publish a PUT whole. The temp name is not a checkpoint file, so a crash here leaves
        # a directory without a manifest: a leftover.
        tmp = self._path(ckpt_id, f".{MANIFEST}.tmp")
        with self.fs.open(tmp, "wb") as f:
            hashing.write_all(f, memoryview(data))
        self.fs.mv(tmp, self._path(ckpt_id, MANIFEST))

    def _read_small(self, ckpt_id: str, name: str) -> bytes:
        path = self._path(ckpt_id, name)
        if self.fs.size(path) > _MAX_MANIFEST:
            raise CheckpointCorrupt(f"{self._where(ckpt_id, name)}: implausibly large")
        return bytes(self.fs.cat_file(path))

    @contextlib.contextmanager
    def _open_read(self, ckpt_id: str, name: str) -> Iterator[tuple[BinaryIO, int]]:
        path = self._path(ckpt_id, name)
        size = int(self.fs.size(path))
        with self.fs.open(path, "rb") as f:
            yield f, size

    def _entries(self) -> list[tuple[str, bool]] | None:
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

    def _head(self, ckpt_id: str, name: str, n: int) -> bytes:
        return bytes(self.fs.cat_file(self._path(ckpt_id, name), start=0, end=n))

    def _write_marker(self) -> None:
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(f"{self.root}/{MARKER}", _MARKER_TEXT)

    def _ids(self) -> list[str]:
        self.fs.invalidate_cache(self.root)
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        names = [
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        ]
        return [n for n in names if ID_RE.fullmatch(n)]

    def _candidate_ids(self) -> list[str]:
        return self._ids()

    def exists(self, ckpt_id: str) -> bool:
        return bool(self.fs.exists(self._path(check_id(ckpt_id), MANIFEST)))

    def delete(self, ckpt_id: str) -> None:
        """Remove the manifest (the uncommit), then the rest."""
        check_id(ckpt_id)
        self._check_root(claim=True)
        self._uncommit(ckpt_id)
        d = self._path(ckpt_id)
        if self.fs.exists(d):
            self.fs.rm(d, recursive=True)

    def _uncommit(self, ckpt_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(ckpt_id, MANIFEST))

    def leftovers(self) -> list[str]:
        out = []
        for ckpt_id in self._ids():
            if not NEW_ID_RE.fullmatch(ckpt_id):
                continue  # only a name new_id() makes is ours to remove
            if not self.fs.exists(self._path(ckpt_id, MANIFEST)) and not _is_inflight(
                self._where(ckpt_id)
            ):
                out.append(ckpt_id)
        return sorted(out)

    def clean_leftovers(self) -> int:
        self._check_root(claim=True)
        freed = 0
        for ckpt_id in self.leftovers():
            d = self._path(ckpt_id)
            with contextlib.suppress(FileNotFoundError):
                freed += int(self.fs.du(d, total=True))
                self.fs.rm(d, recursive=True)
        return freed


def open_store(url_or_path: str, *, compression: str = "none") -> CheckpointStore:
    """The store for a directory or URL: a path or file:// gets the atomic-rename LocalStore,
    any other fsspec URL (memory://, s3://, ...) an FsspecStore."""
    if "://" not in url_or_path:
        return LocalStore(url_or_path, compression=compression)
    protocol, rest = url_or_path.split("://", 1)
    if protocol == "file":
        return LocalStore(rest, compression=compression)
    return FsspecStore(url_or_path, compression=compression)


if TYPE_CHECKING:  # mypy checks that each backend fits the protocol
    _local: CheckpointStore = LocalStore("/nonexistent")
    _fsspec: CheckpointStore = FsspecStore("memory://nonexistent")
