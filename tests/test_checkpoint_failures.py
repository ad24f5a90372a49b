"""What goes wrong on real disks: corruption, torn writes, a full disk, hostile ids and paths.

(The Protocol-level versions, over every backend, are in the shipped StoreTestCase: a missing
manifest, bad ids everywhere, a flipped byte; here are the exhaustive and disk-specific ones.)

Every test damages real files (or kills a real process) and checks the store's promise: nothing
half-written or corrupted is ever loaded, failures name the file and the cause, and nothing
outside the store's root is touched.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator

import pytest
import torch

from hpsearch.checkpoint import CheckpointStore, FsspecStore, LocalStore, hashing
from hpsearch.checkpoint.format import CheckpointInfo, encode_manifest, parse_file
from hpsearch.checkpoint.store import MARKER
from hpsearch.errors import (
    CheckpointCorrupt,
    CheckpointFormatError,
    CheckpointWriteError,
)

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def tensors(scale: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(scale)
    return {
        "model": {"w": torch.randn(64 * scale, 32, generator=g), "b": torch.zeros(32)},
        "optimizer": {"m": torch.randn(64 * scale, 32, generator=g), "step": torch.tensor(5)},
    }


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[CheckpointStore]:
    if request.param == "local":
        yield LocalStore(str(tmp_path))
        return
    s = FsspecStore(f"memory://hpsearch-fail-{uuid.uuid4().hex}")
    yield s
    if s.fs.exists(s.root):
        s.fs.rm(s.root, recursive=True)


def read_bytes(store: CheckpointStore, ckpt_id: str, name: str) -> bytes:
    if isinstance(store, LocalStore):
        with open(os.path.join(store.root, ckpt_id, name), "rb") as f:
            return f.read()
    assert isinstance(store, FsspecStore)
    return bytes(store.fs.cat_file(f"{store.root}/{ckpt_id}/{name}"))


def write_bytes(store: CheckpointStore, ckpt_id: str, name: str, data: bytes | None) -> None:
    """Replace (or with None, delete) one file of a committed checkpoint, behind its back."""
    if isinstance(store, LocalStore):
        path = os.path.join(store.root, ckpt_id, name)
        if data is None:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
        return
    assert isinstance(store, FsspecStore)
    path = f"{store.root}/{ckpt_id}/{name}"
    if data is None:
        store.fs.rm_file(path)
    else:
        store.fs.pipe_file(path, data)


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


DAMAGE: dict[str, Callable[[bytes], bytes | None]] = {
    "flip-first": lambda d: flip(d, 0),
    "flip-middle": lambda d: flip(d, len(d) // 2),
    "flip-last": lambda d: flip(d, len(d) - 1),
    "truncate": lambda d: d[: len(d) - 1],
    "empty": lambda d: b"",
    "append": lambda d: d + b"\0",
    "delete": lambda d: None,
}


# ---------------------------------------------------------------------------------------------
# Corruption


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_damaged_file_is_caught_before_any_tensor(
    store: CheckpointStore, name: str, damage: str
) -> None:
    before = store.save(tensors(), {"step": 1})
    info = store.save(tensors(2), {"step": 2})
    write_bytes(store, info.id, name, DAMAGE[damage](read_bytes(store, info.id, name)))
    for check in (store.load, store.verify):
        with pytest.raises(CheckpointCorrupt, match=name.replace(".", r"\.")) as e:
            check(info.id)
        assert info.id in str(e.value)
    assert store.info(info.id).id == info.id  # the manifest itself is fine
    assert store.load(before.id).state == {"step": 1}  # the others are untouched


@pytest.mark.parametrize("damage", ["flip-hash", "flip-meta", "truncate", "append", "garbage"])
def test_damaged_manifest_is_caught(store: CheckpointStore, damage: str) -> None:
    info = store.save(tensors(), {}, meta={"trial": 12})
    raw = read_bytes(store, info.id, "manifest.json")
    if damage == "flip-hash":
        some_hash = info.files["model.safetensors"][1]
        raw = raw.replace(some_hash.encode(), flip(some_hash.encode(), 10))
    elif damage == "flip-meta":
        raw = raw.replace(b'"trial": 12', b'"trial": 13')  # valid JSON, wrong content
    elif damage == "garbage":
        raw = os.urandom(300)
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = DAMAGE[damage](raw) or b""
    write_bytes(store, info.id, "manifest.json", raw)
    for check in (store.load, store.verify, store.info):
        with pytest.raises(CheckpointCorrupt, match=r"manifest\.json"):
            check(info.id)
    assert store.list() == []  # logged and left out, never listed as loadable


def test_newer_format_version_is_refused(store: CheckpointStore) -> None:
    info = store.save(tensors(), {})
    body = json.loads(read_bytes(store, info.id, "manifest.json"))
    body["format_version"] = 999
    write_bytes(store, info.id, "manifest.json", json.dumps(body).encode())
    for check in (store.load, store.info, store.verify):
        with pytest.raises(CheckpointFormatError, match=r"newer hpsearch.*upgrade"):
            check(info.id)


def test_manifest_cannot_name_paths_outside_the_checkpoint(store: CheckpointStore) -> None:
    info = store.save(tensors(), {})
    files = dict(info.files)
    files["../../escape.safetensors"] = files.pop("model.safetensors")
    evil = CheckpointInfo(info.id, {}, files, info.created, "none")
    write_bytes(store, info.id, "manifest.json", encode_manifest(evil, hashing.HASHERS["blake3"]))
    with pytest.raises(CheckpointCorrupt, match="not a checkpoint file"):
        store.load(info.id)


def test_manifest_of_another_checkpoint_is_refused(store: CheckpointStore) -> None:
    a = store.save(tensors(), {})
    b = store.save(tensors(), {})
    write_bytes(store, b.id, "manifest.json", read_bytes(store, a.id, "manifest.json"))
    with pytest.raises(CheckpointCorrupt, match="does not match its directory"):
        store.load(b.id)


def safetensors_bytes(header: dict[str, object], data: bytes, hlen: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if hlen is None else hlen) + text + data


def raw_header(text: bytes, ndata: int) -> bytes:
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(ndata)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD_FILES = {
    "too short": (b"\x01\x00", "shorter than"),
    "header too long": (safetensors_bytes({"a": F32_2}, bytes(8), hlen=1 << 40), "exceeds"),
    "not json": (struct.pack("<Q", 8) + b"{not js}", "not valid JSON"),
    "not an object": (safetensors_bytes([1, 2], b""), "not a JSON object"),  # type: ignore[arg-type]
    "unknown dtype": (safetensors_bytes({"a": {**F32_2, "dtype": "F128"}}, bytes(8)), "dtype"),
    "negative dim": (safetensors_bytes({"a": {**F32_2, "shape": [-2]}}, bytes(8)), "shape"),
    "size mismatch": (safetensors_bytes({"a": {**F32_2, "shape": [3]}}, bytes(8)), "do not hold"),
    "gap": (
        safetensors_bytes({"a": {**F32_2, "data_offsets": [4, 12]}}, bytes(12)),
        "expected 0",
    ),
    "overlap": (
        safetensors_bytes({"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, bytes(12)),
        "gap or overlap",
    ),
    "trailing bytes": (safetensors_bytes({"a": F32_2}, bytes(12)), "covers 8 bytes"),
    "extra key": (safetensors_bytes({"a": {**F32_2, "x": 1}}, bytes(8)), "exactly"),
    "duplicate": (raw_header(b'{"a":%s,"a":%s}' % ((json.dumps(F32_2).encode(),) * 2), 8), "dup"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_parser_is_strict(case: str) -> None:
    data, match = BAD_FILES[case]
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0)
    with pytest.raises(CheckpointCorrupt, match=r"weights\.safetensors") as e:
        parse_file(buf.to(torch.uint8), "weights.safetensors")
    assert match in str(e.value)


# ---------------------------------------------------------------------------------------------
# Torn writes: a real process killed while saving, at chosen points of the save


CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    sys.path.insert(0, sys.argv[1])
    import torch
    from hpsearch.checkpoint import FsspecStore, LocalStore, hashing

    def save_and_die_at(kind, url, event):
        store = LocalStore(url) if kind == "local" else FsspecStore(url)
        layer, n = event.split(":")
        name = {"write": "write_all", "fsync": "fsync"}[layer]
        real = getattr(hashing, name)
        calls, lock = [0], threading.Lock()

        def hook(*args):
            with lock:
                calls[0] += 1
                hit = calls[0] == int(n)
            if hit:  # the same as a SIGKILL from outside at this very point of the save
                print("at", event, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)

        setattr(hashing, name, hook)
        big = {"model": {"w": torch.ones(1_000_000)}, "optimizer": {"m": torch.zeros(750_000)}}
        store.save(big, {"i": 1})
        print("saved without reaching", event, flush=True)

    # torch is imported once; each save runs in a fork of this process (which has run no torch
    # op, so no thread pool is copied half-held into the forks)
    for event in sys.argv[4:]:
        pid = os.fork()
        if pid == 0:
            save_and_die_at(sys.argv[2], sys.argv[3], event)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("died", event, os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)
    """
)

# Where each save is killed, counted in the two functions every byte and every fsync goes
# through, and whether it has committed by then. A local save writes 6 times (header and data
# of each tensor file, the state, the manifest) and fsyncs 6 times (3 files, the manifest, the
# temp directory, then the root after the rename); an fsspec save writes 6 times (the manifest
# last), without fsyncs.
KILLS = {
    "local": {"write:1": False, "write:6": False, "fsync:5": False, "fsync:6": True},
    "fsspec-file": {"write:3": False, "write:6": False},
}


@pytest.mark.parametrize("kind", list(KILLS))
def test_killed_save_leaves_only_loadable_checkpoints(kind: str, tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "ckpts")
    store: CheckpointStore = LocalStore(root) if kind == "local" else FsspecStore(f"file://{root}")
    earlier = store.save(tensors(), {"earlier": True})
    kills = KILLS[kind]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, SRC, kind.split("-")[0], store.url, *kills],
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr.decode()
    lines = child.stdout.decode().splitlines()
    assert lines == [x for e in kills for x in (f"at {e}", f"died {e} {int(signal.SIGKILL)}")]
    listed = store.list()
    assert len(listed) == 1 + sum(kills.values())  # the earlier one, and saves renamed in time
    for info in listed:
        loaded = store.load(info.id)  # every listed checkpoint is whole
        assert store.verify(info.id) == info
        if "i" in loaded.state:
            assert bool((loaded.tensors["model"]["w"] == 1).all())
    assert len(store.leftovers()) == len(kills) - sum(kills.values())  # one per torn save
    assert store.clean_leftovers() > 0
    assert store.leftovers() == []
    assert store.load(earlier.id).state == {"earlier": True}
    assert store.verify(earlier.id) == earlier


def test_half_done_delete_is_a_leftover(tmp_path: object) -> None:
    store = LocalStore(str(tmp_path))
    keep = store.save(tensors(), {})
    doomed = store.save(tensors(), {})
    manifest = os.path.getsize(os.path.join(store.root, doomed.id, "manifest.json"))
    store.backend.uncommit(doomed.id)  # the first step of delete(), as if the process died then
    assert not store.exists(doomed.id)
    assert [i.id for i in store.list()] == [keep.id]
    assert store.leftovers() == [f".del-{doomed.id}"]
    assert store.clean_leftovers() == doomed.nbytes + manifest
    assert store.leftovers() == [] and store.verify(keep.id) == keep
    store.delete(doomed.id)  # finishing the delete later is harmless


def test_temp_dir_of_a_running_save_is_not_a_leftover(tmp_path: object) -> None:
    store = LocalStore(str(tmp_path))
    os.makedirs(os.path.join(store.root, f".tmp-ck-1-{os.getpid()}"))  # ours, but not in flight
    os.makedirs(os.path.join(store.root, f".tmp-ck-2-{os.getppid()}"))  # a live process's
    assert store.leftovers() == [f".tmp-ck-1-{os.getpid()}"]


# ---------------------------------------------------------------------------------------------
# Disk full and other write errors


def fail_after(nbytes: int, err: int) -> Callable[[object, memoryview], None]:
    """A write layer that writes `nbytes` for real, then fails like a full disk."""
    real = hashing.write_all
    left = [nbytes]

    def write_all(f: object, view: memoryview) -> None:
        if len(view) > left[0]:
            real(f, view[: left[0]])  # type: ignore[arg-type]
            left[0] = 0
            raise OSError(err, os.strerror(err))
        left[0] -= len(view)
        real(f, view)  # type: ignore[arg-type]

    return write_all


def assert_failed_cleanly(store: CheckpointStore, earlier: CheckpointInfo) -> None:
    assert [i.id for i in store.list()] == [earlier.id]
    assert store.leftovers() == []
    if isinstance(store, LocalStore):
        assert sorted(set(os.listdir(store.root)) - {MARKER}) == [earlier.id]  # no temp dir
    assert store.load(earlier.id).state == {"earlier": 1}


@pytest.mark.parametrize("at", [0, 100, 20_000, 40_000])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EACCES])
def test_write_error_fails_cleanly(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch, at: int, err: int
) -> None:
    earlier = store.save(tensors(), {"earlier": 1})
    monkeypatch.setattr(hashing, "write_all", fail_after(at, err))
    with pytest.raises(CheckpointWriteError, match=os.strerror(err)) as e:
        store.save(tensors(4), {"later": 1})
    assert ".safetensors" in str(e.value) or "state.json" in str(e.value)  # names the file
    monkeypatch.undo()
    assert_failed_cleanly(store, earlier)


def test_fsync_error_fails_cleanly(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(str(tmp_path))
    earlier = store.save(tensors(), {"earlier": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(hashing, "fsync", broken_fsync)
    with pytest.raises(CheckpointWriteError, match="Input/output error"):
        store.save(tensors(), {})
    monkeypatch.undo()
    assert_failed_cleanly(store, earlier)


@pytest.fixture
def tiny_tmpfs(tmp_path: object) -> Iterator[str]:
    mnt = os.path.join(str(tmp_path), "tmpfs")
    os.makedirs(mnt)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); the injected ENOSPC tests cover this")
    if done.returncode != 0:
        pytest.skip(
            f"mounting a tmpfs is not permitted here ({done.stderr.decode().strip()}); "
            "the injected ENOSPC tests cover this"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], capture_output=True, timeout=10)


def test_real_full_disk(tiny_tmpfs: str) -> None:
    store = LocalStore(os.path.join(tiny_tmpfs, "ckpts"))
    earlier = store.save({"model": {"w": torch.ones(20_000)}}, {"earlier": 1})  # 80 kB
    with pytest.raises(CheckpointWriteError, match="No space left on device") as e:
        store.save({"model": {"w": torch.ones(500_000)}}, {})  # 2 MB into 1 MB
    assert "model.safetensors" in str(e.value)
    assert_failed_cleanly(store, earlier)
    store.save({"model": {"w": torch.ones(20_000)}}, {})  # the space was given back


def test_read_only_root_fails_cleanly(tmp_path: object) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    store = LocalStore(str(tmp_path))
    earlier = store.save(tensors(), {"earlier": 1})
    os.chmod(store.root, 0o555)
    try:
        with pytest.raises(CheckpointWriteError, match="Permission denied"):
            store.save(tensors(), {})
    finally:
        os.chmod(store.root, 0o755)
    assert_failed_cleanly(store, earlier)


# ---------------------------------------------------------------------------------------------
# Path safety


def test_delete_never_follows_a_symlink_out_of_the_root(tmp_path: object) -> None:
    outside = os.path.join(str(tmp_path), "precious")
    os.makedirs(outside)
    with open(os.path.join(outside, "data"), "w") as f:
        f.write("keep me")
    store = LocalStore(os.path.join(str(tmp_path), "ckpts"))
    store.save(tensors(), {})
    os.symlink(outside, os.path.join(store.root, "ck-link"))
    os.symlink(outside, os.path.join(store.root, ".del-ck-link2"))
    store.delete("ck-link")
    store.clean_leftovers()
    assert os.listdir(outside) == ["data"]
    assert not os.path.lexists(os.path.join(store.root, "ck-link"))


def test_other_files_in_the_root_are_left_alone(tmp_path: object) -> None:
    store = LocalStore(str(tmp_path))
    info = store.save(tensors(), {})
    with open(os.path.join(store.root, "lock"), "w") as f:  # a file named like an id
        f.write("not ours")
    os.makedirs(os.path.join(store.root, "notes.d"))
    assert [i.id for i in store.list()] == [info.id]
    assert store.leftovers() == []
    store.clean_leftovers()
    assert sorted(os.listdir(store.root)) == sorted([info.id, "lock", "notes.d", MARKER])
