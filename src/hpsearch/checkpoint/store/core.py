"""The store core: every rule of the checkpoint format, over any blob backend.

A checkpoint is an entry `<root>/<id>/` holding one safetensors file per tensor group,
`state.json` and `manifest.json`. The manifest is written last and is the commit record: an
entry without one is not a checkpoint, only a leftover. Loads hash every file they read and
compare with the manifest before a single tensor is returned.

`StoreCore` validates inputs and ids, lays out files, hashes them, writes and reads manifests,
guards the root and finds leftovers; the backend (backend.py) only keeps files. Ids and file
names are checked against fixed patterns before they reach a backend, so nothing is ever
written or deleted outside the store's root.

The root is marked as hpsearch's by a small file, `.hpsearch-store`; an unmarked root that holds
anything is refused unless it is provably an older hpsearch's (root.py). Even in a marked root
only names hpsearch itself generates are ever deleted as leftovers.

A store decompresses only the codec it was opened with (a 'none' store refuses zstd
checkpoints).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import (
    COMPRESSIONS,
    ID_RE,
    MANIFEST,
    STATE,
    CheckpointInfo,
    check_id,
    check_tensors,
    data_file_name,
    decode_manifest,
    decode_state,
    encode_manifest,
    encode_state,
    group_of,
)
from hpsearch.checkpoint.procs import pid_alive
from hpsearch.checkpoint.store import reading
from hpsearch.checkpoint.store.backend import (
    DEL_RE,
    NEW_ID_RE,
    PROCESS_SAVES,
    TMP_RE,
    BlobBackend,
    InflightSaves,
    writing,
)
from hpsearch.checkpoint.store.protocol import LoadedCheckpoint
from hpsearch.checkpoint.store.root import check_root
from hpsearch.checkpoint.store.writing import write_files
from hpsearch.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatch,
    CheckpointNotFound,
)

if TYPE_CHECKING:  # torch only once tensors are saved or loaded: `status` opens a store too
    import torch

    from hpsearch.checkpoint.store.cache import ReadCache

log = logging.getLogger(__name__)


@dataclass
class ReadCounts:
    """Checkpoint files (data and state, not manifests) this store object read: from its
    backend, and from its local cache. On a remote store `backend` counts downloads."""

    backend: int = 0
    cache: int = 0


class StoreCore:
    """A CheckpointStore over `backend`; LocalStore, FsspecStore and MemoryStore are this
    with their backend built from a path or URL."""

    def __init__(
        self,
        backend: BlobBackend,
        compression: str = "none",
        *,
        inflight: InflightSaves = PROCESS_SAVES,
        cache: ReadCache | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if compression == "zstd":
            hashing.zstd_module()  # fail now, not at the first save
        self.backend = backend
        self.compression = compression
        self.url = backend.url
        self._inflight = inflight
        self.cache = cache
        self.reads = ReadCounts()
        self._marked = False
        self._check_root(claim=False)

    def __repr__(self) -> str:
        cache = f", cache={self.cache!r}" if self.cache is not None else ""
        return f"{type(self).__name__}({self.url!r}, compression={self.compression!r}{cache})"

    # -- whose root is this? ----------------------------------------------------------------

    def _check_root(self, *, claim: bool, saving: bool = False) -> None:
        """Refuse a root that holds what hpsearch did not write; with `claim`, mark it ours
        (`root.check_root`). Called when the store is opened (claim=False: nothing is written
        by a read-only command) and before the first save, delete or cleanup (claim=True)."""
        if not self._marked:
            self._marked = check_root(self.backend, claim=claim, saving=saving)

    # -- writing ----------------------------------------------------------------------------

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
        tensor is then streamed straight from its memory while it is hashed, into a staged
        save that the backend publishes atomically with the manifest. `ckpt_id` defaults to
        `new_id()`; an id that exists already is refused (ids are never reused).
        """
        from hpsearch.checkpoint.tensorfile import plan_file

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
        with writing(ckpt_id, self.backend.where()):
            self._check_root(claim=True, saving=True)  # marked before any staged entry
        staged = self.backend.stage(ckpt_id)
        with self._inflight.holding(self.backend.where(staged.entry)):
            try:
                staged.create()
                files = write_files(staged, ckpt_id, plans, state_bytes, self.compression)
                info = CheckpointInfo(
                    id=ckpt_id,
                    meta=meta,
                    files=files,
                    created=created,
                    compression=self.compression,
                )
                staged.commit(encode_manifest(info, hashing.HASHERS[info.hash]))
            except BaseException:
                staged.discard()
                raise
        return info

    # -- reading ----------------------------------------------------------------------------

    def info(self, ckpt_id: str) -> CheckpointInfo:
        """The checkpoint's validated manifest (CheckpointNotFound if it is not committed)."""
        check_id(ckpt_id)
        where = self.backend.where(ckpt_id, MANIFEST)
        try:
            raw = reading.read_small(self.backend, ckpt_id, MANIFEST)
        except FileNotFoundError:
            raise CheckpointNotFound(
                f"no checkpoint {ckpt_id!r} in {self.url} (a directory without "
                f"{MANIFEST} is not a checkpoint)"
            ) from None
        except OSError as e:
            raise CheckpointError(f"{where}: cannot be read: {e}") from e
        except MemoryError:
            raise CheckpointCorrupt(reading.no_memory(where, None)) from None
        return decode_manifest(raw, ckpt_id, where, hashing.HASHERS)

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
        raw_state = self._read(info, STATE)
        if info.compression == "zstd":
            tensors = {g: self._parse(info, by_group[g], self._read(info, by_group[g]))
                       for g in wanted}  # fmt: skip
        else:
            tensors = {g: self._read(info, by_group[g], reading.read_tensors) for g in wanted}
        state = decode_state(bytes(raw_state.numpy()), self.backend.where(ckpt_id, STATE))
        return LoadedCheckpoint(info=info, tensors=tensors, state=state)

    def verify(self, ckpt_id: str) -> CheckpointInfo:
        """Re-read, re-hash and re-parse every file, one at a time (memory: the largest file).
        Always from the store itself, never from the local cache: it checks what is kept."""
        info = self.info(ckpt_id)
        self._check_codec(info)
        for name in sorted(info.files):
            buf = self._read(info, name, cached=False)
            if name == STATE:
                decode_state(bytes(buf.numpy()), self.backend.where(ckpt_id, STATE))
            else:
                self._parse(info, name, buf)
        return info

    def _read(
        self,
        info: CheckpointInfo,
        name: str,
        read: reading.Reader | None = None,
        *,
        cached: bool = True,
    ) -> Any:
        read = read or hashing.read_hashed
        if self.cache is None or not cached:
            self.reads.backend += 1
            return reading.read_verified(self.backend, self.exists, info, name, read)
        buf, hit = self.cache.read(self.backend, self.exists, info, name, read)
        if hit:
            self.reads.cache += 1
        else:
            self.reads.backend += 1
        return buf

    def _parse(self, info: CheckpointInfo, name: str, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        return reading.parse(info, self.backend.where(info.id, name), buf)

    def _check_codec(self, info: CheckpointInfo) -> None:
        """Decompress only what the study chose: the codec is named by the checkpoint itself,
        and a manifest is no trust boundary (its hash has no key)."""
        if info.compression != "none" and info.compression != self.compression:
            raise CheckpointFormatError(
                f"{self.backend.where(info.id)}: compressed with {info.compression}, but this "
                f"store was opened with compression {self.compression!r}; hpsearch decompresses "
                f"only the codec the study configured. If this study wrote it, set "
                f"checkpoints.compression: {info.compression}"
            )

    def list(self) -> list[CheckpointInfo]:
        """Committed checkpoints sorted by creation time (then id).

        A checkpoint whose manifest cannot be read or is invalid is logged and left out, so one
        bad entry never hides the others.
        """
        out = []
        for ckpt_id in self._id_entries():
            try:
                out.append(self.info(ckpt_id))
            except CheckpointNotFound:
                continue  # not committed, or deleted meanwhile
            except (CheckpointCorrupt, CheckpointFormatError, CheckpointError) as e:
                log.warning("skipping checkpoint %s: %s", ckpt_id, e)
        return sorted(out, key=lambda i: (i.created, i.id))

    def exists(self, ckpt_id: str) -> bool:
        return self.backend.is_file(check_id(ckpt_id), MANIFEST)

    def _id_entries(self) -> builtins.list[str]:
        """Entries of the root named like an id that are directories (a link is not)."""
        return [n for n, is_dir in self.backend.entries() or [] if is_dir and ID_RE.fullmatch(n)]

    # -- deleting ---------------------------------------------------------------------------

    def delete(self, ckpt_id: str) -> None:
        """Uncommit (one atomic step, after which nothing can load it), then remove the rest."""
        check_id(ckpt_id)
        self._check_root(claim=True)
        doomed = self.backend.uncommit(ckpt_id)
        if self.cache is not None:
            self.cache.drop(ckpt_id)
        with contextlib.suppress(FileNotFoundError):
            self.backend.remove(doomed)

    def leftovers(self) -> builtins.list[str]:
        """Torn saves and half-done deletes: entries of ours that hold no checkpoint.

        An id entry without a manifest is a torn save where saves are written in place, and
        damage from outside where they are renamed into place whole: dead either way, but only
        a name new_id() makes is ours to remove. A `.tmp-*-<pid>` entry is torn once no
        process with that pid runs on this host (or, for this process's pid, once no save of
        this process writes it).
        """
        out = []
        for name, is_dir in self.backend.entries() or []:
            location = self.backend.where(name)
            if is_dir and NEW_ID_RE.fullmatch(name):
                if (
                    not self.backend.is_file(name, MANIFEST)
                    and location not in self._inflight
                    and not self.backend.busy(name)
                ):
                    out.append(name)
            elif DEL_RE.fullmatch(name):
                out.append(name)
            elif m := TMP_RE.fullmatch(name):
                pid = int(m.group("pid"))
                running = location in self._inflight if pid == os.getpid() else pid_alive(pid)
                if not running:
                    out.append(name)
        return sorted(out)

    def clean_leftovers(self) -> int:
        """Remove `leftovers()` and return the bytes freed."""
        self._check_root(claim=True)
        freed = 0
        for name in self.leftovers():
            with contextlib.suppress(FileNotFoundError):
                size = self.backend.size(name)
                self.backend.remove(name)
                freed += size
        return freed
