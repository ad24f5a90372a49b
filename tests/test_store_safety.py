"""The checkpoint store never touches what is not its own, and a forged file is no bomb.

Issue 10, items 1 and 2: a pre-existing directory at `<checkpoints.dir>/<name>` lost its
folders to the leftover cleanup, and a 131 kB zstd file made a load allocate 4 GiB.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from typing import Any

import fsspec
import pytest
import torch

import hpsearch
from hpsearch.checkpoint import FsspecStore, LocalStore, hashing, open_store
from hpsearch.checkpoint.format import CheckpointInfo, encode_manifest
from hpsearch.checkpoint.store import MARKER, ForeignStoreRoot
from hpsearch.cli import main
from hpsearch.errors import (
    CheckpointCorrupt,
    CheckpointFormatError,
    CheckpointWriteError,
    UsageError,
)
from hpsearch.search.session import Session
from studyutil import write_study

# the child runs the same hpsearch as this test
SRC = os.path.dirname(os.path.dirname(os.path.abspath(hpsearch.__file__)))


def tensors() -> dict[str, dict[str, torch.Tensor]]:
    return {"model": {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)}}


def precious(where: str) -> str:
    """A user's folder with a file in it; returns the file."""
    os.makedirs(os.path.join(where, "data"), exist_ok=True)
    path = os.path.join(where, "data", "f")
    with open(path, "w") as f:
        f.write("precious\n")
    return path


def intact(path: str) -> bool:
    with open(path) as f:
        return f.read() == "precious\n"


# ---------------------------------------------------------------------------------------------
# Item 1: nothing that is not ours is deleted


def test_unmarked_root_with_a_users_folder_is_refused_and_kept(tmp_path: Any) -> None:
    root = str(tmp_path / "ckroot" / "victim")
    f = precious(root)
    with pytest.raises(ForeignStoreRoot) as e:
        LocalStore(root)
    msg = str(e.value)
    assert isinstance(e.value, UsageError)
    assert root in msg and "(data)" in msg and "did not write" in msg
    assert "empty or new directory" in msg and MARKER in msg
    with pytest.raises(ForeignStoreRoot):
        open_store(root, compression="none")
    assert intact(f) and sorted(os.listdir(root)) == ["data"]  # no marker written either


def test_marked_root_deletes_only_names_hpsearch_generates(tmp_path: Any) -> None:
    store = LocalStore(str(tmp_path / "ck"))
    keep = store.save(tensors(), {})
    assert os.path.isfile(os.path.join(store.root, MARKER))
    # someone else's folders inside our root, one of them named like an id, none with a manifest
    f = precious(store.root)
    os.makedirs(os.path.join(store.root, "warmup", "x"))
    torn = store.new_id()
    os.makedirs(os.path.join(store.root, torn))  # an id of ours without a manifest: a leftover
    assert store.leftovers() == [torn]
    assert store.clean_leftovers() == 0
    assert intact(f) and os.path.isdir(os.path.join(store.root, "warmup", "x"))
    assert not os.path.exists(os.path.join(store.root, torn))
    assert [i.id for i in LocalStore(store.root).list()] == [keep.id]  # a marked root reopens


def test_victim_folder_survives_hpsearch_run(tmp_path: Any, capsys: Any) -> None:
    ckroot = str(tmp_path / "ckroot")
    f = precious(os.path.join(ckroot, "victim"))
    small = {
        "checkpoints": {"dir": ckroot, "every": 0.5, "keep_best": 1},
        "warmup": {"epochs": 1, "hparams": {"lr": 1e-2, "batch_size": 128, "hidden": 16}},
        "trials": {"n": 2, "epochs": 0.5, "eval_every": 0.5},
        "search_space": {"lr": {"float": [1e-3, 3e-2], "log": True}},
        "sampler": {"name": "RandomSampler"},
        "pruner": {"name": "NopPruner"},
    }
    path = write_study(tmp_path, name="victim", **small)
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "checkpoints.dir" in err and "did not write" in err and "Traceback" not in err
    assert intact(f)
    # another study's folder beside ours is not ours to judge: only <checkpoints.dir>/<name> is
    s = Session.open(write_study(tmp_path, name="other", **small))
    try:
        info = s.store.save(tensors(), {})
        s.store.clean_leftovers()
        assert s.store.load(info.id).state == {}
    finally:
        s.close()
    assert intact(f) and sorted(os.listdir(os.path.join(ckroot, "victim"))) == ["data"]
    assert sorted(os.listdir(os.path.join(ckroot, "other"))) == sorted([MARKER, info.id])


def test_symlinked_root_is_resolved_and_judged_the_same(tmp_path: Any) -> None:
    full, empty = str(tmp_path / "full"), str(tmp_path / "empty")
    f = precious(full)
    os.makedirs(empty)
    os.symlink(full, str(tmp_path / "to-full"))
    os.symlink(empty, str(tmp_path / "to-empty"))
    with pytest.raises(ForeignStoreRoot):
        LocalStore(str(tmp_path / "to-full"))
    assert intact(f)
    store = LocalStore(str(tmp_path / "to-empty"))
    assert store.root == os.path.realpath(empty) and store.url == str(tmp_path / "to-empty")
    info = store.save(tensors(), {})
    assert sorted(os.listdir(empty)) == sorted([MARKER, info.id])
    g = precious(empty)  # appears later, in the target: still left alone
    store.clean_leftovers()
    assert intact(g) and store.load(info.id).state == {}


def test_fsspec_root_with_a_foreign_folder(tmp_path: Any) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/hpsearch-safety-{uuid.uuid4().hex}"
    fs.pipe_file(f"{root}/victim/data/f", b"precious")
    with pytest.raises(ForeignStoreRoot, match="did not write"):
        FsspecStore(f"memory://{root}/victim")
    assert fs.cat_file(f"{root}/victim/data/f") == b"precious"

    store = FsspecStore(f"memory://{root}/mine", leftover_grace_s=0)
    keep = store.save(tensors(), {})
    assert fs.isfile(f"{root}/mine/{MARKER}")
    fs.pipe_file(f"{root}/mine/warmup/notes", b"precious")  # named like an id, no manifest
    torn = store.new_id()
    fs.pipe_file(f"{root}/mine/{torn}/model.safetensors", b"torn")  # a torn save of ours
    # by default a fresh one may be another worker's upload in flight: not touched yet
    assert FsspecStore(f"memory://{root}/mine").leftovers() == []
    assert store.leftovers() == [torn]
    store.clean_leftovers()
    assert fs.cat_file(f"{root}/mine/warmup/notes") == b"precious"
    assert not fs.exists(f"{root}/mine/{torn}")
    assert [i.id for i in store.list()] == [keep.id]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_old_root_of_only_hpsearch_checkpoints_is_adopted(tmp_path: Any, kind: str) -> None:
    url = str(tmp_path / "old") if kind == "local" else f"memory://hpsearch-old-{uuid.uuid4().hex}"
    store = open_store(url)
    a = store.save(tensors(), {"a": 1})
    b = store.save(tensors(), {"b": 1}, ckpt_id="warmup-base")  # an id new_id() did not make
    doomed = store.save(tensors(), {})
    store.backend.uncommit(doomed.id)  # type: ignore[attr-defined]  # a delete cut short
    # as an hpsearch from before the marker left it
    if isinstance(store, LocalStore):
        os.unlink(os.path.join(store.root, MARKER))
    else:
        assert isinstance(store, FsspecStore)
        store.fs.rm_file(f"{store.root}/{MARKER}")
    old = open_store(url)  # opening only reads: nothing is written yet
    assert {i.id for i in old.list()} == {a.id, b.id}
    assert old.leftovers() == [f".del-{doomed.id}" if kind == "local" else doomed.id]
    old.clean_leftovers()  # the first write adopts and marks it
    assert old.leftovers() == []
    assert old.load(b.id).state == {"b": 1} and old.load(a.id).state == {"a": 1}
    if isinstance(old, LocalStore):
        assert sorted(os.listdir(old.root)) == sorted([MARKER, a.id, b.id])
    else:
        assert isinstance(old, FsspecStore)
        assert old.fs.isfile(f"{old.root}/{MARKER}")


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_folders_named_like_ids_are_no_evidence_of_an_hpsearch_root(
    tmp_path: Any, kind: str
) -> None:
    """Issue 20: an unmarked root holding only `ck-deadbeef-00000000/notes.txt` was adopted and
    the folder deleted as a torn save; a manifest-looking text made any id-named folder ours."""
    fake_manifest = json.dumps({"format": "hpsearch-checkpoint", "files": {}}).encode()
    files = {"ck-deadbeef-00000000/notes.txt": b"precious", ".del-ck-1-00000000/x": b"precious",
             "warmup-base/manifest.json": fake_manifest}  # fmt: skip
    if kind == "local":
        url = str(tmp_path / "ids")
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(url, name)), exist_ok=True)
            with open(os.path.join(url, name), "wb") as f:
                f.write(data)

        def read(name: str) -> bytes:
            with open(os.path.join(url, name), "rb") as f:
                return f.read()
    else:
        fs = fsspec.filesystem("memory")
        url = f"memory://hpsearch-ids-{uuid.uuid4().hex}"
        for name, data in files.items():
            fs.pipe_file(f"{url}/{name}", data)

        def read(name: str) -> bytes:
            return bytes(fs.cat_file(f"{url}/{name}"))

    with pytest.raises(ForeignStoreRoot, match=r"did not write \(warmup-base\)"):
        open_store(url)  # the fake manifest does not check out: that folder is not ours
    del files["warmup-base/manifest.json"]
    if kind == "local":
        os.unlink(os.path.join(url, "warmup-base", "manifest.json"))
        os.rmdir(os.path.join(url, "warmup-base"))
    else:
        fs.rm(f"{url}/warmup-base", recursive=True)
    with pytest.raises(ForeignStoreRoot, match="no committed hpsearch checkpoint") as e:
        open_store(url)
    assert MARKER in str(e.value) and "ck-deadbeef-00000000" in str(e.value)
    assert all(read(name) == data for name, data in files.items())


def test_adopting_by_hand_keeps_the_users_files(tmp_path: Any) -> None:
    root = str(tmp_path / "mixed")
    f = precious(root)
    with open(os.path.join(root, MARKER), "w"):
        pass  # what the refusal message tells the user to do
    store = LocalStore(root)
    info = store.save(tensors(), {})
    store.clean_leftovers()
    store.delete(info.id)
    assert intact(f) and sorted(os.listdir(root)) == [MARKER, "data"]


def test_a_foreign_manifest_does_not_make_a_folder_ours(tmp_path: Any) -> None:
    root = str(tmp_path / "ds")
    os.makedirs(os.path.join(root, "dataset"))
    with open(os.path.join(root, "dataset", "manifest.json"), "w") as f:
        json.dump({"format": "some-dataset", "files": []}, f)
    with pytest.raises(ForeignStoreRoot, match="dataset"):
        LocalStore(root)


# ---------------------------------------------------------------------------------------------
# Item 2: zstd bombs and codecs the study did not configure


def rle_frame(prefix: bytes, zeros: int, *, declare: bool) -> bytes:
    """A zstd frame of `prefix` then `zeros` zero bytes, built by hand from RLE blocks (4 bytes
    per 128 KiB): 4 GiB of zeros is a 131 kB file, as in the issue. `declare` writes the
    content size into the frame header, as zstd's own writer does."""
    block = 128 << 10
    out = bytearray(b"\x28\xb5\x2f\xfd")  # magic
    out += bytes([0xC0 if declare else 0x00, 7 << 3])  # 8-byte content size?, 128 KiB window
    if declare:
        out += struct.pack("<Q", len(prefix) + zeros)
    blocks: list[tuple[int, bytes, int]] = [
        (0, prefix[i : i + block], len(prefix[i : i + block])) for i in range(0, len(prefix), block)
    ]
    while zeros:
        n = min(zeros, block)
        blocks.append((1, b"\0", n))
        zeros -= n
    for j, (kind, content, size) in enumerate(blocks):
        out += ((j == len(blocks) - 1) | kind << 1 | size << 3).to_bytes(3, "little") + content
    return bytes(out)


def forge(store: LocalStore, ckpt_id: str, name: str, data: bytes) -> None:
    """Replace one file of a committed checkpoint and rewrite its manifest to match, as anyone
    who can write the directory can (the manifest's hash has no key), keeping its codec."""
    info = store.info(ckpt_id)
    with open(os.path.join(str(store.root), ckpt_id, name), "wb") as f:
        f.write(data)
    files = dict(info.files)
    files[name] = (len(data), hashing.HASHERS[info.hash](data))
    forged = CheckpointInfo(
        id=info.id, meta=info.meta, files=files, created=info.created, compression=info.compression
    )
    with open(os.path.join(str(store.root), ckpt_id, "manifest.json"), "wb") as f:
        f.write(encode_manifest(forged, hashing.HASHERS[info.hash]))


def safetensors_header(entries: dict[str, Any]) -> bytes:
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def test_zstd_bomb_is_refused_within_a_memory_bound(tmp_path: Any) -> None:
    pytest.importorskip("zstandard")
    store = LocalStore(str(tmp_path / "ck"), compression="zstd")
    name = "model.safetensors.zst"
    with open(os.path.join(store.root, store.save(tensors(), {}).id, name), "rb") as f:
        real = hashing.zstd_module().ZstdDecompressor().decompress(f.read())
    gib4 = 4 << 30
    bombs = {
        "zeros, size declared": rle_frame(b"", gib4, declare=True),  # the 131 kB file
        "valid file + zeros, size declared": rle_frame(real, gib4, declare=True),
        "valid file + zeros, size unknown": rle_frame(real, gib4, declare=False),
        "huge header length": rle_frame(struct.pack("<Q", 1 << 40), gib4, declare=False),
    }
    ids = {}
    for what, data in bombs.items():
        assert len(data) < 200_000, what
        ids[what] = store.save(tensors(), {}).id
        forge(store, ids[what], name, data)
    # numpy registers its buffers with tracemalloc, so every output buffer is counted
    tracemalloc.start()
    try:
        for ckpt_id in ids.values():
            for check in (store.load, store.verify):
                with pytest.raises(CheckpointCorrupt, match=re.escape(name)):
                    check(ckpt_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20, peak  # the old code allocated 4 GiB here


def test_a_zstd_file_declaring_more_than_its_size_may_hold_is_refused(tmp_path: Any) -> None:
    """Issue 20: a well-formed 33 kB file whose header declares a 1 GiB tensor (and whose frame
    holds exactly that) passed every check, so `verify` and `load` allocated and filled 1 GiB;
    the issue's 98 kB file declared 3 GiB (3.4 GB, 29 s)."""
    pytest.importorskip("zstandard")
    store = LocalStore(str(tmp_path / "ck"), compression="zstd")
    gib = 1 << 30
    header = safetensors_header({"w": {"dtype": "U8", "shape": [gib], "data_offsets": [0, gib]}})
    forged = store.save(tensors(), {}).id
    forge(store, forged, "model.safetensors.zst", rle_frame(header, gib, declare=True))
    for declare in (True, False):  # a frame that does not say its size: the header is bounded
        if not declare:
            forge(store, forged, "model.safetensors.zst", rle_frame(header, gib, declare=False))
        tracemalloc.start()
        try:
            for check in (store.verify, store.load):
                with pytest.raises(CheckpointCorrupt, match="may hold"):
                    check(forged)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, peak


def test_a_zstd_save_a_reader_would_refuse_is_refused_by_name(tmp_path: Any) -> None:
    """hpsearch never writes what its reader takes for a forgery: 68 MiB of one repeated value
    compresses several thousand times."""
    pytest.importorskip("zstandard")
    store = LocalStore(str(tmp_path / "ck"), compression="zstd")
    kept = store.save(tensors(), {})
    with pytest.raises(CheckpointWriteError, match=r"checkpoints\.compression: none") as e:
        store.save({"model": {"w": torch.zeros(17 << 20)}}, {})
    assert "model.safetensors.zst compresses 71303" in str(e.value)
    assert [i.id for i in store.list()] == [kept.id] and store.leftovers() == []


def test_a_state_nested_past_the_parser_is_a_corrupt_checkpoint(tmp_path: Any) -> None:
    store = LocalStore(str(tmp_path / "ck"))
    forged = store.save(tensors(), {}).id
    forge(store, forged, "state.json", b"[" * 100_000 + b"]" * 100_000)
    for check in (store.verify, store.load):
        with pytest.raises(CheckpointCorrupt, match=r"state\.json: not valid JSON"):
            check(forged)


def test_a_store_refuses_a_codec_the_study_did_not_configure(tmp_path: Any) -> None:
    pytest.importorskip("zstandard")
    root = str(tmp_path / "ck")
    zstd = LocalStore(root, compression="zstd")
    packed = zstd.save(tensors(), {"z": 1})
    plain = LocalStore(root)  # compression 'none'
    for check in (plain.load, plain.verify):
        with pytest.raises(CheckpointFormatError, match=r"checkpoints\.compression: zstd"):
            check(packed.id)
    assert [i.id for i in plain.list()] == [packed.id]  # still listed, so GC can delete it
    unpacked = plain.save(tensors(), {"n": 1})
    # a zstd store reads both, so turning compression on mid-study keeps old checkpoints
    assert zstd.load(unpacked.id).state == {"n": 1} and zstd.load(packed.id).state == {"z": 1}
    assert torch.equal(zstd.load(packed.id).tensors["model"]["w"], tensors()["model"]["w"])


OOM_CHILD = textwrap.dedent(
    """
    import resource, sys
    from hpsearch.checkpoint import LocalStore
    from hpsearch.errors import CheckpointCorrupt
    store = LocalStore(sys.argv[1], compression="zstd")
    store.load(sys.argv[2])  # a small one: every import and thread pool is in place
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) << 10
    limit = vm + (128 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    for ckpt_id in sys.argv[3:]:
        try:
            store.load(ckpt_id)
            print("loaded", ckpt_id)
        except CheckpointCorrupt as e:
            print("corrupt", e)
    """
)


def test_memory_error_while_reading_is_a_corrupt_checkpoint(tmp_path: Any) -> None:
    pytest.importorskip("zstandard")
    store = LocalStore(str(tmp_path / "ck"), compression="zstd")
    small = store.save(tensors(), {})
    # a well-formed zstd checkpoint of 256 MiB (9 MiB of noise then zeros: within the 32x a
    # zstd file may expand), and a plain 192 MB one
    n, noise = 256 << 20, os.urandom(9 << 20)
    header = safetensors_header({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}})
    big_zstd = store.save(tensors(), {})
    frame = rle_frame(header + noise, n - len(noise), declare=True)
    forge(store, big_zstd.id, "model.safetensors.zst", frame)
    big_plain = LocalStore(store.root).save({"model": {"w": torch.zeros(48 << 20)}}, {})
    proc = subprocess.run(
        [sys.executable, "-c", OOM_CHILD, store.root, small.id, big_zstd.id, big_plain.id],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    for line, ckpt_id in zip(lines, [big_zstd.id, big_plain.id], strict=True):
        assert line.startswith("corrupt") and ckpt_id in line and "not enough memory" in line
