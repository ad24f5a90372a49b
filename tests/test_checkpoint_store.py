"""Checkpoint store pieces outside the Protocol's promises: picking a backend, safetensors
compatibility, the background saver, and the local read-through cache.

The promises every backend keeps (round trips, ids, listing, deleting, torn and corrupted
files, whose root it is) are `hpsearch.testing.conformance.store.StoreTestCase`, run over each
backend by tests/test_store_conformance.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import threading
from concurrent.futures import Future

import pytest
import safetensors.torch
import torch

from hpsearch.checkpoint import (
    AsyncSaver,
    CheckpointInfo,
    FsspecStore,
    LocalStore,
    ReadCache,
    hashing,
    open_store,
)
from hpsearch.checkpoint.format import parse_file, plan_file
from hpsearch.errors import CheckpointCorrupt, CheckpointWriteError
from hpsearch.testing.conformance.store_data import all_dtypes_tensors, same, small_state


def test_open_store_picks_backend(tmp_path: object) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    local = open_store(f"file://{tmp_path}/x")
    assert isinstance(local, LocalStore) and local.url == f"{tmp_path}/x"
    assert isinstance(open_store("memory://somewhere"), FsspecStore)
    with pytest.raises(ValueError, match="compression"):
        open_store(str(tmp_path), compression="lz4")


# ---------------------------------------------------------------------------------------------
# safetensors compatibility


def test_files_are_byte_identical_to_safetensors() -> None:
    tensors = all_dtypes_tensors()
    plan = plan_file(tensors)
    ours = plan.header + b"".join(bytes(p) for p in plan.parts)
    assert len(ours) == plan.size
    assert ours == safetensors.torch.save(tensors)


def test_safetensors_reads_our_files(tmp_path: object) -> None:
    store = LocalStore(str(tmp_path))
    tensors = all_dtypes_tensors()
    info = store.save({"model": tensors}, {})
    theirs = safetensors.torch.load_file(os.path.join(store.root, info.id, "model.safetensors"))
    assert set(theirs) == set(tensors)
    for key, t in tensors.items():
        assert same(theirs[key], t), key


def test_we_read_safetensors_files(tmp_path: object) -> None:
    tensors = all_dtypes_tensors()
    path = os.path.join(str(tmp_path), "x.safetensors")
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    with open(path, "rb") as f:
        buf, _, exact = hashing.read_hashed(f, os.path.getsize(path), "blake3")
    assert exact
    ours = parse_file(buf, path)
    assert set(ours) == set(tensors)
    for key, t in tensors.items():
        assert same(ours[key], t), key


def test_unaligned_foreign_layout_is_copied_not_refused() -> None:
    header = {
        "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    data = struct.pack("<Q", len(text)) + text + b"\x07" + struct.pack("<2f", 1.5, -2.0)
    out = parse_file(torch.frombuffer(bytearray(data), dtype=torch.uint8), "x")
    assert out["b"].tolist() == [1.5, -2.0] and out["a"].tolist() == [7]


# ---------------------------------------------------------------------------------------------
# AsyncSaver


class GatedStore(LocalStore):
    """A real LocalStore whose saves wait for a gate, to observe what runs when."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def save(self, *args: object, **kwargs: object) -> CheckpointInfo:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            assert self.gate.wait(10)
            return super().save(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with self._lock:
                self.active -= 1


def test_async_save_returns_after_snapshot_before_write(tmp_path: object) -> None:
    store = GatedStore(str(tmp_path))
    model = {"w": torch.randn(500, 200), "step": torch.tensor(1)}
    state = {"step": 1, "nested": {"lr": [0.1]}}
    with AsyncSaver(store) as saver:
        fut = saver.save({"model": model}, state, meta={"k": 1})
        assert isinstance(fut, Future) and not fut.done()  # the write has not happened yet
        expected = model["w"].clone()
        model["w"].add_(1.0)  # the caller goes on training right away
        model["step"].fill_(2)
        state["nested"]["lr"][0] = 0.5
        store.gate.set()
        info = saver.wait()
    assert info is not None and fut.result() == info
    loaded = store.load(info.id)
    assert torch.equal(loaded.tensors["model"]["w"], expected)
    assert loaded.tensors["model"]["step"].item() == 1
    assert loaded.state == {"step": 1, "nested": {"lr": [0.1]}}
    assert loaded.info.meta == {"k": 1}


def test_async_save_one_in_flight_and_buffers_reused(tmp_path: object) -> None:
    store = GatedStore(str(tmp_path))
    store.gate.set()
    w = torch.zeros(300, 300)
    saver = AsyncSaver(store)
    futures = []
    buffers = []
    for i in range(4):
        w.fill_(i)
        futures.append(saver.save({"model": {"w": w}}, {"i": i}))
        buffers.append(saver._buffers[("model", "w")].data_ptr())
    saver.close()
    assert store.max_active == 1
    assert len(set(buffers)) == 1  # later snapshots copy into the first save's buffers
    for i, fut in enumerate(futures):
        loaded = store.load(fut.result().id)
        assert loaded.state == {"i": i} and bool((loaded.tensors["model"]["w"] == i).all())
    with pytest.raises(RuntimeError, match="closed"):
        saver.save({}, {})


def test_async_save_error_surfaces_at_next_call(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(str(tmp_path))

    def disk_full(f: io.RawIOBase, view: memoryview) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    saver = AsyncSaver(store)
    monkeypatch.setattr(hashing, "write_all", disk_full)
    saver.save(small_state(), {"i": 0})
    with pytest.raises(CheckpointWriteError, match="No space left"):
        saver.save(small_state(), {"i": 1})  # raises the previous save's error, starts nothing
    monkeypatch.undo()
    fut = saver.save(small_state(), {"i": 2})
    assert saver.wait() == fut.result()
    saver.close()
    assert [store.load(i.id).state for i in store.list()] == [{"i": 2}]
    assert store.leftovers() == []


def test_async_save_refuses_bad_input_in_the_caller(tmp_path: object) -> None:
    with AsyncSaver(LocalStore(str(tmp_path))) as saver:
        with pytest.raises(ValueError, match="group name"):
            saver.save({"Bad": {}}, {})
        with pytest.raises(TypeError):
            saver.save({}, {"x": object()})
        assert saver.wait() is None


def test_async_save_follows_changing_shapes(tmp_path: object) -> None:
    store = LocalStore(str(tmp_path))
    with AsyncSaver(store) as saver:
        first = saver.save({"model": {"w": torch.ones(3, 3), "gone": torch.ones(2)}}, {})
        second = saver.save({"model": {"w": torch.full((4, 2), 2.0, dtype=torch.float64)}}, {})
    assert set(store.load(first.result().id).tensors["model"]) == {"w", "gone"}
    w = store.load(second.result().id).tensors["model"]["w"]
    assert w.dtype == torch.float64 and w.shape == (4, 2) and bool((w == 2).all())
    assert list(saver._buffers) == []  # closed: the buffers are released


# -- the read-through cache (the S3 side is tests/test_s3.py) --------------------------------


def _cached_files(cache: ReadCache) -> list[str]:
    return sorted(os.path.relpath(p, cache.root) for _, _, p in cache.files())


def test_cache_serves_verified_copies_and_rereads_a_damaged_one(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "ck")
    info = LocalStore(root).save(small_state(), {"s": 1})
    cache = ReadCache(os.path.join(str(tmp_path), "cache"))
    store = LocalStore(root, cache=cache)
    first = store.load(info.id)
    assert _cached_files(cache) == sorted(f"{info.id}/{n}" for n in info.files)
    # damage the cached copy: the hash catches it, the store's file is read instead
    path = os.path.join(cache.root, info.id, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 1]))
    again = store.load(info.id)
    assert same(again.tensors["model"]["w"], first.tensors["model"]["w"])
    assert (store.reads.backend, store.reads.cache) == (len(info.files) + 1, len(info.files) - 1)
    assert store.load(info.id).state == {"s": 1}  # the copy was replaced by a good one
    assert store.reads.backend == len(info.files) + 1
    # a damaged file in the store is refused, and not cached
    other = LocalStore(root).save(small_state(), {"s": 2})
    with open(os.path.join(root, other.id, "state.json"), "r+b") as f:
        f.write(b"X")
    with pytest.raises(CheckpointCorrupt, match=r"state\.json"):
        store.load(other.id)
    assert not any(
        p.startswith(other.id) and p.endswith("state.json") for p in _cached_files(cache)
    )


def test_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "ck")
    big = {"model": {"w": torch.randn(64, 64)}}  # 16 KiB of tensor data
    ids = [LocalStore(root).save(big, {}).id for _ in range(4)]
    one = sum(size for size, _ in LocalStore(root).info(ids[0]).files.values())
    cache = ReadCache(os.path.join(str(tmp_path), "cache"), max_bytes=2 * one)
    store = LocalStore(root, cache=cache)
    for i in ids[:2]:
        store.load(i)
    store.load(ids[0])  # used again: ids[1] is now the least recently used
    os.utime(os.path.join(cache.root, ids[1], "model.safetensors"), (1, 1))
    os.utime(os.path.join(cache.root, ids[1], "state.json"), (1, 1))
    store.load(ids[2])
    assert cache.nbytes() <= 2 * one
    assert sorted(os.listdir(cache.root)) == sorted([ids[0], ids[2]])
    store.delete(ids[2])  # deleting through the store drops its copy
    assert os.listdir(cache.root) == [ids[0]]


def test_an_unwritable_cache_costs_the_cache_not_the_load(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "ck")
    info = LocalStore(root).save(small_state(), {"s": 3})
    blocker = os.path.join(str(tmp_path), "file")
    with open(blocker, "w"):
        pass
    store = LocalStore(root, cache=ReadCache(os.path.join(blocker, "cache")))  # under a file
    assert store.load(info.id).state == {"s": 3} and store.load(info.id).state == {"s": 3}
    assert store.reads.backend == 2 * len(info.files)


def test_open_store_caches_per_store(tmp_path: object) -> None:
    cache_dir = os.path.join(str(tmp_path), "cache")
    a = open_store(os.path.join(str(tmp_path), "a"), cache_dir=cache_dir)
    b = open_store(os.path.join(str(tmp_path), "b"), cache_dir=cache_dir)
    ia, ib = a.save(small_state(), {"a": 1}), b.save(small_state(), {"b": 1})
    assert a.load(ia.id).state == {"a": 1} and b.load(ib.id).state == {"b": 1}
    assert len(os.listdir(cache_dir)) == 2  # one directory per store
    assert open_store(os.path.join(str(tmp_path), "a")).cache is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="storage_options"):
        open_store(str(tmp_path), storage_options={"key": "k"})
