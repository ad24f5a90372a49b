"""Conformance suite: every checkpoint store backend must pass the same tests.

Like Optuna's storage test suite, one parametrized fixture supplies each backend (a local
directory, fsspec's memory://, fsspec over file://) and every test runs against all of them,
saving and loading for real.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest
import safetensors.torch
import torch

from hpsearch.checkpoint import (
    AsyncSaver,
    CheckpointInfo,
    CheckpointStore,
    FsspecStore,
    LocalStore,
    hashing,
    open_store,
)
from hpsearch.checkpoint.format import DTYPES, parse_file, plan_file
from hpsearch.errors import CheckpointMismatch, CheckpointNotFound, CheckpointWriteError

BACKENDS = ["local", "memory", "fsspec-file"]


def make_store(kind: str, tmp_path: object, compression: str = "none") -> CheckpointStore:
    if kind == "local":
        return LocalStore(os.path.join(str(tmp_path), "ckpts"), compression=compression)
    if kind == "memory":
        return FsspecStore(f"memory://hpsearch-test-{uuid.uuid4().hex}", compression=compression)
    return FsspecStore(f"file://{tmp_path}/fs-ckpts", compression=compression)


def _supply(kind: str, tmp_path: object, compression: str) -> Iterator[CheckpointStore]:
    s = make_store(kind, tmp_path, compression)
    yield s
    if kind == "memory" and isinstance(s, FsspecStore) and s.fs.exists(s.root):
        s.fs.rm(s.root, recursive=True)  # memory:// is process-wide


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[CheckpointStore]:
    yield from _supply(request.param, tmp_path, "none")


@pytest.fixture(params=BACKENDS)
def zstd_store(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[CheckpointStore]:
    pytest.importorskip("zstandard")
    yield from _supply(request.param, tmp_path, "zstd")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaNs included), for every dtype, float8 too."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(
        torch.equal(
            a.contiguous().reshape(-1).view(torch.uint8),
            b.contiguous().reshape(-1).view(torch.uint8),
        )
    )


def sample_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    raw = torch.randint(0, 256, (n * torch.empty((), dtype=dtype).element_size(),), generator=g)
    t = raw.to(torch.uint8).view(dtype).reshape(shape)
    return (t != 0) if dtype == torch.bool else t


def all_dtypes_tensors() -> dict[str, torch.Tensor]:
    out = {}
    shapes = [(), (0,), (7,), (2, 3, 5), (0, 4)]
    for i, (name, dtype) in enumerate(DTYPES.items()):
        for j, shape in enumerate(shapes):
            out[f"{name.lower()}.{j}"] = sample_tensor(dtype, shape, seed=100 * i + j)
    return out


def small_state() -> dict[str, dict[str, torch.Tensor]]:
    return {
        "model": {"w": torch.randn(4, 3), "b": torch.zeros(3)},
        "optimizer": {"state.0.exp_avg": torch.randn(4, 3), "state.0.step": torch.tensor(3.0)},
    }


# ---------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_every_dtype_and_shape(store: CheckpointStore) -> None:
    tensors = all_dtypes_tensors()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors["transposed"] = base.t()  # not contiguous
    tensors["sliced"] = base[1:3, 2:]  # storage offset
    tensors["big"] = torch.randn(1000, 300)
    info = store.save({"model": tensors, "extra": {"x": torch.ones(2)}}, {"step": 1})
    loaded = store.load(info.id)
    assert set(loaded.tensors) == {"model", "extra"}
    assert set(loaded.tensors["model"]) == set(tensors)
    for key, t in tensors.items():
        got = loaded.tensors["model"][key]
        assert got.device.type == "cpu"
        assert same(got, t.contiguous()), key


def test_state_and_meta_round_trip_with_nan(store: CheckpointStore) -> None:
    state = {
        "step": 12,
        "loss": float("nan"),
        "bounds": [float("inf"), float("-inf"), -0.0, 1e-310],
        "nested": {"rng": {"python": [3, [1, 2, 3], None], "seed": 2**63 - 1}, "name": "αβγ ✓"},
        "flags": [True, False, None],
    }
    meta = {"trial": 7, "kind": "fork", "metric": float("nan")}
    info = store.save(small_state(), state, meta=meta)
    loaded = store.load(info.id)
    assert math.isnan(loaded.state["loss"])
    assert loaded.state["bounds"][:2] == [math.inf, -math.inf]
    assert math.copysign(1, loaded.state["bounds"][2]) == -1
    assert loaded.state["bounds"][3] == 1e-310
    assert loaded.state["nested"] == state["nested"]
    assert loaded.state["flags"] == [True, False, None]
    assert info.meta["trial"] == 7
    again = store.info(info.id)
    assert again.meta["kind"] == "fork" and math.isnan(again.meta["metric"])
    assert loaded.info.id == info.id


def test_info_describes_files(store: CheckpointStore) -> None:
    info = store.save(small_state(), {"a": 1})
    assert set(info.files) == {"model.safetensors", "optimizer.safetensors", "state.json"}
    assert info.compression == "none"
    assert info.nbytes == sum(size for size, _ in info.files.values())
    assert info.groups == ["model", "optimizer"]
    assert all(len(h) == 64 for _, h in info.files.values())
    assert store.info(info.id) == info
    assert abs(info.created - time.time()) < 60


def test_load_selected_groups(store: CheckpointStore) -> None:
    info = store.save(small_state(), {})
    loaded = store.load(info.id, groups=["model"])
    assert set(loaded.tensors) == {"model"}
    with pytest.raises(CheckpointMismatch, match="optimiser"):
        store.load(info.id, groups=["optimiser"])


def test_loaded_tensors_are_independent_of_the_store(store: CheckpointStore) -> None:
    info = store.save(small_state(), {})
    first = store.load(info.id).tensors["model"]["w"]
    first.add_(1)
    assert not torch.equal(store.load(info.id).tensors["model"]["w"], first)


def test_list_exists_delete(store: CheckpointStore) -> None:
    assert store.list() == []
    assert store.leftovers() == []
    infos = [store.save(small_state(), {"i": i}, meta={"i": i}) for i in range(3)]
    assert [i.id for i in store.list()] == [i.id for i in infos]  # sorted by created
    assert [i.meta["i"] for i in store.list()] == [0, 1, 2]
    assert all(store.exists(i.id) for i in infos)
    store.delete(infos[1].id)
    assert not store.exists(infos[1].id)
    assert [i.id for i in store.list()] == [infos[0].id, infos[2].id]
    with pytest.raises(CheckpointNotFound):
        store.load(infos[1].id)
    with pytest.raises(CheckpointNotFound):
        store.info(infos[1].id)
    store.delete(infos[1].id)  # idempotent
    store.delete(store.new_id())  # never existed
    assert store.leftovers() == []
    assert store.clean_leftovers() == 0
    assert store.load(infos[2].id).state == {"i": 2}


def test_verify_returns_info(store: CheckpointStore) -> None:
    info = store.save(small_state(), {"x": 1})
    assert store.verify(info.id) == info


def test_ids_are_unique_and_valid(store: CheckpointStore) -> None:
    ids = [store.new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.startswith("ck-") for i in ids)
    info = store.save(small_state(), {})
    assert info.id.startswith("ck-")


def test_given_id_is_used_and_never_reused(store: CheckpointStore) -> None:
    info = store.save(small_state(), {}, ckpt_id="warmup-base")
    assert info.id == "warmup-base" and store.exists("warmup-base")
    with pytest.raises(CheckpointWriteError, match="never reused"):
        store.save(small_state(), {}, ckpt_id="warmup-base")
    assert store.verify("warmup-base") == info


def test_bad_input_is_refused_before_anything_is_written(store: CheckpointStore) -> None:
    bad_inputs: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: store.save({"Model": {"w": torch.ones(1)}}, {}), ValueError, "group name"),
        (lambda: store.save({"../x": {"w": torch.ones(1)}}, {}), ValueError, "group name"),
        (lambda: store.save({"model": {"w": [1.0]}}, {}), TypeError, r"\['w'\]"),
        (lambda: store.save({"model": {"w": torch.ones(1).to_sparse()}}, {}), ValueError, "sparse"),
        (
            lambda: store.save({"model": {"w": torch.ones(1, dtype=torch.complex128)}}, {}),
            ValueError,
            "complex128",
        ),
        (lambda: store.save({"model": {"w": torch.ones(1)}}, {"x": object()}), TypeError, "JSON"),
        (lambda: store.save({}, {}, meta={"x": {1, 2}}), TypeError, "JSON"),
    ]
    for call, exc, match in bad_inputs:
        with pytest.raises(exc, match=match):
            call()
    assert store.list() == [] and store.leftovers() == []


def test_empty_checkpoint_holds_only_state(store: CheckpointStore) -> None:
    info = store.save({}, {"only": "state"})
    assert set(info.files) == {"state.json"}
    assert store.load(info.id).tensors == {}
    assert store.load(info.id).state == {"only": "state"}


def test_zstd_round_trip(zstd_store: CheckpointStore) -> None:
    tensors = all_dtypes_tensors()
    tensors["adam"] = torch.randn(256, 256) * 1e-3
    info = zstd_store.save({"optimizer": tensors}, {"s": 1})
    assert info.compression == "zstd"
    assert set(info.files) == {"optimizer.safetensors.zst", "state.json"}
    loaded = zstd_store.load(info.id)
    for key, t in tensors.items():
        assert same(loaded.tensors["optimizer"][key], t), key
    assert zstd_store.verify(info.id) == info


def test_zstd_store_reads_uncompressed_checkpoints(tmp_path: object) -> None:
    pytest.importorskip("zstandard")
    tensors = small_state()
    info = LocalStore(str(tmp_path)).save(tensors, {})
    zstd = LocalStore(str(tmp_path), compression="zstd")
    assert same(zstd.load(info.id).tensors["model"]["w"], tensors["model"]["w"])


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
