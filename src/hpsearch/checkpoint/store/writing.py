"""Streaming a checkpoint's files into a staged save, hashing them on the way."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import MANIFEST, STATE, ZSTD_FLOOR, ZSTD_RATIO, zstd_limit
from hpsearch.checkpoint.store.backend import StagedSave, writing
from hpsearch.errors import CheckpointWriteError

if TYPE_CHECKING:
    from hpsearch.checkpoint.tensorfile import FilePlan


def write_files(
    staged: StagedSave,
    ckpt_id: str,
    plans: Mapping[str, FilePlan],
    state_bytes: bytes,
    compression: str,
) -> dict[str, tuple[int, str]]:
    """Write the data files and the state, wait until all are synced; returns each file's
    (size, hash) for the manifest.

    Each file is synced (and closed) in a background thread while the next one is written,
    so the disk's work overlaps the CPU's. Uncompressed files on a backend whose sync waits for
    the disk are hashed from the same memory during their own fsync, when the CPU is otherwise
    idle; elsewhere bytes are hashed while they stream out.
    """
    files: dict[str, tuple[int, str]] = {}
    syncing: list[tuple[str, Future[None]]] = []

    def sync_close(f: BinaryIO) -> None:
        try:
            staged.sync(f)
        finally:
            f.close()

    with ThreadPoolExecutor(4, thread_name_prefix="hpsearch-sync") as pool:
        for name, plan in [*plans.items(), (STATE, None)]:
            path = f"{staged.where}/{name}"
            with writing(ckpt_id, path):
                f = staged.open(name)
                try:
                    if plan is not None and compression == "none" and staged.sync_waits:
                        views = [memoryview(plan.header), *plan.parts]
                        for v in views:
                            hashing.write_all(f, v)
                        done = pool.submit(sync_close, f)
                        files[name] = (plan.size, hashing.hash_views(views))
                    else:
                        files[name] = _write_hashing(f, plan, state_bytes, compression)
                        if plan is not None and compression == "zstd":
                            _check_readable(ckpt_id, name, plan.size, files[name][0])
                        done = pool.submit(sync_close, f)
                except BaseException:
                    f.close()
                    raise
            syncing.append((path, done))
        for path, done in syncing:
            with writing(ckpt_id, path):
                done.result()
    return files


def _write_hashing(
    f: BinaryIO, plan: FilePlan | None, state_bytes: bytes, compression: str
) -> tuple[int, str]:
    """Stream one file (the state when `plan` is None) through a hashing writer."""
    with hashing.HashingWriter(f) as w:
        if plan is None:
            w.write(state_bytes)
        elif compression == "zstd":
            z = hashing.zstd_writer(w, plan.size)
            _stream(z, plan)
            z.close()
        else:
            _stream(w, plan)
        return w.finish()


def _check_readable(ckpt_id: str, name: str, raw: int, stored: int) -> None:
    """Refuse to commit a zstd file that a reader would take for a forged one."""
    if raw > zstd_limit(stored):
        raise CheckpointWriteError(
            f"saving checkpoint {ckpt_id}: {name} compresses {raw} bytes to {stored} "
            f"({raw / max(stored, 1):.0f}x), more than hpsearch reads back from a zstd file "
            f"({ZSTD_RATIO}x beyond {ZSTD_FLOOR >> 20} MiB: a file that small declaring that much "
            "is what a forged one looks like); this state is almost all one repeated value: set "
            "checkpoints.compression: none for this study"
        )


def _stream(out: Any, plan: FilePlan) -> None:
    out.write(plan.header)
    for part in plan.parts:
        out.write(part)


def write_manifest(staged: StagedSave, ckpt_id: str, data: bytes) -> None:
    """Write and sync the manifest as a plain file of the staged save (the backends whose
    commit is a rename or a move of the whole entry)."""
    with writing(ckpt_id, f"{staged.where}/{MANIFEST}"):
        f = staged.open(MANIFEST)
        try:
            hashing.write_all(f, memoryview(data))
            staged.sync(f)
        finally:
            f.close()
