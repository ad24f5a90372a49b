"""StoreTestCase: every promise of the CheckpointStore Protocol, run against one backend.

Subclass it in a test module and provide the hooks below; pytest then runs each test on a
fresh store (saving and loading for real, nothing mocked but a full disk):

    class TestMyStore(StoreTestCase):
        def make_store(self, tmp_path, compression="none"):
            return MyStore(tmp_path / "ck", compression=compression)
        def reopen(self, store, compression="none"): ...
        def damage_file(self, store, ckpt_id, name, change): ...
        def put_foreign(self, store, path, data): ...
        def read_foreign(self, store, path): ...

`tear_save` and `interrupt_delete` (a save or a delete cut short, as by a killed process) work
for any store built on `StoreCore`; a store that is not must provide them too.
"""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import MANIFEST
from hpsearch.checkpoint.store import CheckpointStore, ForeignStoreRoot, StoreCore
from hpsearch.errors import (
    CheckpointCorrupt,
    CheckpointFormatError,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointWriteError,
)
from hpsearch.testing.conformance.store_data import (
    BAD_IDS,
    all_dtypes_tensors,
    flip_middle,
    same,
    small_state,
)


class StoreTestCase:
    """The conformance suite; subclasses provide the hooks (see the module docstring)."""

    # -- hooks ----------------------------------------------------------------------------

    def make_store(self, tmp_path: Path, compression: str = "none") -> CheckpointStore:
        """A store on a fresh root that does not exist yet or is empty."""
        raise NotImplementedError

    def reopen(self, store: CheckpointStore, compression: str = "none") -> CheckpointStore:
        """A second store object on the same root (as another command would open it)."""
        raise NotImplementedError

    def damage_file(
        self,
        store: CheckpointStore,
        ckpt_id: str,
        name: str,
        change: Callable[[bytes], bytes | None],
    ) -> None:
        """Replace one file of a committed checkpoint with `change(its bytes)` behind the
        store's back (None: delete it)."""
        raise NotImplementedError

    def put_foreign(self, store: CheckpointStore, path: str, data: bytes) -> None:
        """Write a user's file `<root>/<dir>/<file>` behind the store's back."""
        raise NotImplementedError

    def read_foreign(self, store: CheckpointStore, path: str) -> bytes | None:
        """The bytes of `<root>/<path>`, None if it is gone."""
        raise NotImplementedError

    def close_store(self, store: CheckpointStore) -> None:
        """Release what the store holds after a test (e.g. a process-wide memory:// root)."""

    def tear_save(self, store: CheckpointStore, ckpt_id: str) -> None:
        """Leave a save of `ckpt_id` as a process killed mid-write leaves it."""
        core = self._core(store)
        staged = core.backend.stage(ckpt_id)
        staged.create()
        f = staged.open("model.safetensors")
        try:
            hashing.write_all(f, memoryview(b"\0" * 100))
        finally:
            f.close()

    def interrupt_delete(self, store: CheckpointStore, ckpt_id: str) -> None:
        """Do the first step of `delete` only, as a process killed right after it."""
        core = self._core(store)
        core.backend.uncommit(ckpt_id)

    def _core(self, store: CheckpointStore) -> StoreCore:
        if not isinstance(store, StoreCore):
            raise NotImplementedError(f"{type(store).__name__} must provide this hook itself")
        return store

    # -- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[CheckpointStore]:
        s = self.make_store(tmp_path)
        try:
            yield s
        finally:
            self.close_store(s)

    @pytest.fixture
    def zstd_store(self, tmp_path: Path) -> Iterator[CheckpointStore]:
        pytest.importorskip("zstandard")
        s = self.make_store(tmp_path, "zstd")
        try:
            yield s
        finally:
            self.close_store(s)

    # -- round trips ----------------------------------------------------------------------

    def test_round_trip_is_bitwise_for_every_dtype_and_shape(self, store: CheckpointStore) -> None:
        tensors = all_dtypes_tensors()
        base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
        tensors["transposed"] = base.t()  # not contiguous
        tensors["sliced"] = base[1:3, 2:]  # storage offset
        tensors["bf16.strided"] = torch.randn(6, 4).to(torch.bfloat16)[::2]
        tensors["big"] = torch.randn(1000, 300)
        info = store.save({"model": tensors, "extra": {"x": torch.ones(2)}}, {"step": 1})
        loaded = store.load(info.id)
        assert set(loaded.tensors) == {"model", "extra"}
        assert set(loaded.tensors["model"]) == set(tensors)
        for key, t in tensors.items():
            got = loaded.tensors["model"][key]
            assert got.device.type == "cpu"
            assert same(got, t.contiguous()), key
        assert self.reopen(store).load(info.id).tensors["model"]["big"].equal(tensors["big"])

    def test_state_and_meta_round_trip_with_nan(self, store: CheckpointStore) -> None:
        state: dict[str, Any] = {
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

    def test_info_describes_files(self, store: CheckpointStore) -> None:
        info = store.save(small_state(), {"a": 1})
        assert set(info.files) == {"model.safetensors", "optimizer.safetensors", "state.json"}
        assert info.compression == "none"
        assert info.nbytes == sum(size for size, _ in info.files.values())
        assert info.groups == ["model", "optimizer"]
        assert all(len(h) == 64 for _, h in info.files.values())
        assert store.info(info.id) == info == store.verify(info.id)
        assert abs(info.created - time.time()) < 60

    def test_load_selected_groups(self, store: CheckpointStore) -> None:
        info = store.save(small_state(), {})
        assert set(store.load(info.id, groups=["model"]).tensors) == {"model"}
        with pytest.raises(CheckpointMismatch, match="optimiser"):
            store.load(info.id, groups=["optimiser"])

    def test_loaded_tensors_are_independent_of_the_store(self, store: CheckpointStore) -> None:
        info = store.save(small_state(), {})
        first = store.load(info.id).tensors["model"]["w"]
        first.add_(1)
        assert not torch.equal(store.load(info.id).tensors["model"]["w"], first)

    def test_empty_checkpoint_holds_only_state(self, store: CheckpointStore) -> None:
        info = store.save({}, {"only": "state"})
        assert set(info.files) == {"state.json"}
        assert store.load(info.id).tensors == {}
        assert store.load(info.id).state == {"only": "state"}

    def test_zstd_round_trip_and_codec_rules(self, zstd_store: CheckpointStore) -> None:
        tensors = all_dtypes_tensors()
        tensors["adam"] = torch.randn(256, 256) * 1e-3
        info = zstd_store.save({"optimizer": tensors}, {"s": 1})
        assert info.compression == "zstd"
        assert set(info.files) == {"optimizer.safetensors.zst", "state.json"}
        loaded = zstd_store.load(info.id)
        for key, t in tensors.items():
            assert same(loaded.tensors["optimizer"][key], t), key
        assert zstd_store.verify(info.id) == info
        plain = self.reopen(zstd_store, "none")
        with pytest.raises(CheckpointFormatError, match=r"checkpoints\.compression: zstd"):
            plain.load(info.id)  # a store decompresses only the codec it was opened with
        unpacked = plain.save(small_state(), {"n": 1})
        assert zstd_store.load(unpacked.id).state == {"n": 1}  # and reads uncompressed ones

    # -- ids, listing, deleting -----------------------------------------------------------

    def test_ids_are_unique_and_given_ids_never_reused(self, store: CheckpointStore) -> None:
        ids = [store.new_id() for _ in range(1000)]
        assert len(set(ids)) == 1000 and all(i.startswith("ck-") for i in ids)
        assert store.save(small_state(), {}).id.startswith("ck-")
        info = store.save(small_state(), {}, ckpt_id="warmup-base")
        assert info.id == "warmup-base" and store.exists("warmup-base")
        with pytest.raises(CheckpointWriteError, match="never reused"):
            store.save(small_state(), {}, ckpt_id="warmup-base")
        assert store.verify("warmup-base") == info

    def test_bad_ids_are_refused_everywhere(self, store: CheckpointStore) -> None:
        calls: list[Callable[[str], object]] = [
            store.load,
            store.verify,
            store.info,
            store.exists,
            store.delete,
            lambda bad: store.save({}, {}, ckpt_id=bad),
        ]
        for bad in BAD_IDS:
            for call in calls:
                with pytest.raises(ValueError, match="invalid checkpoint id"):
                    call(bad)
        assert store.list() == [] and store.leftovers() == []

    def test_bad_input_is_refused_before_anything_is_written(self, store: CheckpointStore) -> None:
        one = torch.ones(1)
        bad_inputs: list[tuple[Callable[[], object], type[Exception], str]] = [
            (lambda: store.save({"Model": {"w": one}}, {}), ValueError, "group name"),
            (lambda: store.save({"../x": {"w": one}}, {}), ValueError, "group name"),
            (lambda: store.save({"model": {"w": [1.0]}}, {}), TypeError, r"\['w'\]"),  # type: ignore[dict-item]
            (lambda: store.save({"model": {"w": one.to_sparse()}}, {}), ValueError, "sparse"),
            (
                lambda: store.save({"model": {"w": one.to(torch.complex128)}}, {}),
                ValueError,
                "complex128",
            ),
            (lambda: store.save({"model": {"w": one}}, {"x": object()}), TypeError, "JSON"),
            (lambda: store.save({}, {}, meta={"x": {1, 2}}), TypeError, "JSON"),
        ]
        for call, exc, match in bad_inputs:
            with pytest.raises(exc, match=match):
                call()
        assert store.list() == [] and store.leftovers() == []

    def test_list_exists_info_agree_and_delete_is_idempotent(self, store: CheckpointStore) -> None:
        assert store.list() == [] and store.leftovers() == []
        infos = [store.save(small_state(), {"i": i}, meta={"i": i}) for i in range(3)]
        assert [i.id for i in store.list()] == [i.id for i in infos]  # sorted by created
        assert [i.meta["i"] for i in store.list()] == [0, 1, 2]
        assert store.list() == [store.info(i.id) for i in infos]
        store.delete(infos[1].id)
        assert [store.exists(i.id) for i in infos] == [True, False, True]
        assert [i.id for i in store.list()] == [infos[0].id, infos[2].id]
        for call in (store.load, store.info, store.verify):
            with pytest.raises(CheckpointNotFound):
                call(infos[1].id)
        store.delete(infos[1].id)  # idempotent
        store.delete(store.new_id())  # never existed
        assert store.leftovers() == [] and store.clean_leftovers() == 0
        assert store.load(infos[2].id).state == {"i": 2}
        assert [i.id for i in self.reopen(store).list()] == [infos[0].id, infos[2].id]

    # -- what is not whole is never loaded ------------------------------------------------

    def test_a_flipped_byte_is_refused(self, store: CheckpointStore) -> None:
        keep = store.save(small_state(), {"keep": 1})
        for name in ("model.safetensors", "state.json"):
            info = store.save(small_state(), {"step": 2})
            self.damage_file(store, info.id, name, flip_middle)
            for check in (store.load, store.verify):
                with pytest.raises(CheckpointCorrupt, match=name.replace(".", r"\.")) as e:
                    check(info.id)
                assert info.id in str(e.value)
            assert store.info(info.id) == info  # the manifest itself is fine
        info = store.save(small_state(), {})
        self.damage_file(store, info.id, MANIFEST, flip_middle)
        for check in (store.load, store.verify, store.info):
            with pytest.raises(CheckpointCorrupt, match=r"manifest\.json"):
                check(info.id)
        assert info.id not in {i.id for i in store.list()}  # logged and left out
        assert store.load(keep.id).state == {"keep": 1}  # the others are untouched

    def test_a_torn_save_is_never_listed_or_loaded_and_is_cleaned(
        self, store: CheckpointStore
    ) -> None:
        keep = store.save(small_state(), {"keep": 1})
        torn = store.new_id()
        self.tear_save(store, torn)
        for s in (store, self.reopen(store)):
            assert not s.exists(torn) and [i.id for i in s.list()] == [keep.id]
            for call in (s.load, s.info, s.verify):
                with pytest.raises(CheckpointNotFound):
                    call(torn)
            [leftover] = s.leftovers()
            assert torn in leftover
        assert store.clean_leftovers() > 0
        assert store.leftovers() == [] and store.load(keep.id).state == {"keep": 1}

    def test_a_checkpoint_without_its_manifest_is_a_leftover(self, store: CheckpointStore) -> None:
        info = store.save(small_state(), {})
        self.damage_file(store, info.id, MANIFEST, lambda _: None)
        assert not store.exists(info.id) and store.list() == []
        with pytest.raises(CheckpointNotFound, match="not a checkpoint"):
            store.load(info.id)
        assert store.leftovers() == [info.id]
        assert store.clean_leftovers() > 0 and store.leftovers() == []

    def test_a_half_done_delete_is_a_leftover(self, store: CheckpointStore) -> None:
        keep = store.save(small_state(), {})
        doomed = store.save(small_state(), {})
        self.interrupt_delete(store, doomed.id)
        assert not store.exists(doomed.id) and [i.id for i in store.list()] == [keep.id]
        [leftover] = store.leftovers()
        assert doomed.id in leftover
        assert store.clean_leftovers() >= doomed.nbytes
        assert store.leftovers() == [] and store.verify(keep.id) == keep
        store.delete(doomed.id)  # finishing the delete later is harmless

    def test_a_save_in_progress_is_neither_listed_nor_a_leftover(
        self, store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        earlier = store.save(small_state(), {})
        other = self.reopen(store)  # another store object on the root, in this process
        ckpt_id = store.new_id()
        seen: list[tuple[bool, list[str], list[str], list[str]]] = []
        real = hashing.write_all

        def observe(f: Any, view: memoryview) -> None:
            if not seen:  # the first write of the save: its files exist, half written
                ids = [i.id for i in store.list()]
                seen.append((store.exists(ckpt_id), ids, store.leftovers(), other.leftovers()))
            real(f, view)

        monkeypatch.setattr(hashing, "write_all", observe)
        info = store.save(small_state(), {"late": 1}, ckpt_id=ckpt_id)
        monkeypatch.undo()
        assert seen == [(False, [earlier.id], [], [])]
        assert store.load(info.id).state == {"late": 1}

    def test_a_failed_save_leaves_nothing(
        self, store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        earlier = store.save(small_state(), {"earlier": 1})
        real = hashing.write_all
        calls = [0]

        def disk_full_at_second_write(f: Any, view: memoryview) -> None:
            calls[0] += 1
            if calls[0] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(f, view)

        monkeypatch.setattr(hashing, "write_all", disk_full_at_second_write)
        with pytest.raises(CheckpointWriteError, match="No space left on device"):
            store.save({"model": {"w": torch.randn(300, 300)}}, {"later": 1})
        monkeypatch.undo()
        assert [i.id for i in store.list()] == [earlier.id]
        assert store.leftovers() == []
        assert store.load(earlier.id).state == {"earlier": 1}

    # -- whose root is this ---------------------------------------------------------------

    def test_a_foreign_root_is_refused_and_left_alone(self, store: CheckpointStore) -> None:
        self.put_foreign(store, "data/f", b"precious")
        with pytest.raises(ForeignStoreRoot, match="did not write"):
            self.reopen(store)
        assert self.read_foreign(store, "data/f") == b"precious"

    def test_a_marked_root_removes_only_what_hpsearch_generates(
        self, store: CheckpointStore
    ) -> None:
        keep = store.save(small_state(), {})
        self.put_foreign(store, "data/f", b"precious")
        self.put_foreign(store, "warmup/notes", b"named like an id, holds no manifest")
        torn = store.new_id()
        self.tear_save(store, torn)
        [leftover] = store.leftovers()
        assert torn in leftover
        store.clean_leftovers()
        assert self.read_foreign(store, "data/f") == b"precious"
        assert self.read_foreign(store, "warmup/notes") is not None
        assert store.leftovers() == []
        assert [i.id for i in self.reopen(store).list()] == [keep.id]  # a marked root reopens
