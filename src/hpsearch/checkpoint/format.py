"""The on-disk format of one checkpoint: safetensors files, `state.json` and `manifest.json`.

Pure functions with no file I/O, so every rule of the format is in one place and testable on bytes:

- ids and file names, checked by regular expressions before they are ever joined into a path;
- the safetensors layout of each file (tensorfile.py, re-exported here): a header plus zero-copy
  views of each tensor's memory (the caller streams them to a file, never building the whole
  file as one `bytes`), parsed strictly;
- the manifest: the commit record listing every file with its size and hash, plus a hash of the
  manifest itself so that a flipped byte in it is caught too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.checkpoint.strictjson import is_nat, strict_pairs
from hpsearch.errors import CheckpointCorrupt, CheckpointFormatError

if TYPE_CHECKING:
    import torch

    from hpsearch.checkpoint.tensorfile import (
        DTYPES,
        FilePlan,
        header_length,
        layout,
        parse_file,
        plan_file,
        read_file,
    )

# the safetensors layout (tensorfile.py) imports torch: re-exported on first use, so reading a
# manifest (the store's root check, `status`) needs no torch
_TENSORFILE = ("DTYPES", "FilePlan", "header_length", "layout", "parse_file", "plan_file",
               "read_file")  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _TENSORFILE:
        from hpsearch.checkpoint import tensorfile

        return getattr(tensorfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # the safetensors layout is part of the format: importable from here too
    "COMPRESSIONS",
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "ID_RE",
    "MANIFEST",
    "STATE",
    "CheckpointInfo",
    "FilePlan",
    "check_id",
    "check_tensors",
    "data_file_name",
    "decode_manifest",
    "decode_state",
    "encode_manifest",
    "encode_state",
    "group_of",
    "header_length",
    "layout",
    "parse_file",
    "plan_file",
    "read_file",
    "zstd_limit",
]

FORMAT = "hpsearch-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.json"
COMPRESSIONS = ("none", "zstd")
# A zstd file decompresses to at most ZSTD_RATIO times its stored size (or ZSTD_FLOOR bytes, if
# that is more). fp32 training state compresses about 1.1x; only a file of nearly nothing but
# one repeated byte goes further, and that is what a forged one looks like: a 98 kB file can
# declare 3 GiB. hpsearch never writes such a file (the save is refused, naming the fix), so a
# reader refuses any that declares more, before allocating a byte of it.
ZSTD_RATIO = 32
ZSTD_FLOOR = 64 << 20


def zstd_limit(stored: int) -> int:
    """The most bytes a zstd file of `stored` bytes may decompress to."""
    return max(ZSTD_FLOOR, ZSTD_RATIO * stored)


# Ids are joined into paths, so they must be one plain path component: no '/', no '.', no
# leading '-' or '_'. The same rule guards every entry point (save, load, delete, ...).
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
GROUP_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DATA_FILE_RE = re.compile(r"(?P<group>[a-z][a-z0-9_]{0,63})\.safetensors(?P<zst>\.zst)?")


def check_id(ckpt_id: object) -> str:
    """Return `ckpt_id` if it is a valid checkpoint id, else raise ValueError.

    Called wherever an id is about to become part of a path, so '../x', 'a/b', '' or '.tmp-x'
    can never reach the file system.
    """
    if not isinstance(ckpt_id, str) or not ID_RE.fullmatch(ckpt_id):
        raise ValueError(
            f"invalid checkpoint id {ckpt_id!r}: an id is 1-128 characters of letters, digits, "
            "'_' and '-', starting with a letter or digit (ids come from store.new_id())"
        )
    return ckpt_id


def data_file_name(group: str, compression: str) -> str:
    """The file that holds tensor group `group`: `model.safetensors` (or `.safetensors.zst`)."""
    return f"{group}.safetensors" + (".zst" if compression == "zstd" else "")


def group_of(file_name: str) -> str | None:
    """The tensor group a manifest file name holds, or None for `state.json`."""
    m = _DATA_FILE_RE.fullmatch(file_name)
    return m.group("group") if m else None


def check_tensors(tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Check every group name, tensor name and dtype before anything is written.

    Raises TypeError/ValueError naming the group and key and saying what would fit.
    """
    from hpsearch.checkpoint.tensorfile import check_tensor

    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must map group name -> {{name: tensor}}, got {type(tensors)}")
    for group, named in tensors.items():
        if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
            raise ValueError(
                f"invalid tensor group name {group!r}: must match ^[a-z][a-z0-9_]*$ "
                "(e.g. 'model', 'optimizer'), because it becomes the file name"
            )
        if not isinstance(named, Mapping):
            raise TypeError(f"tensors[{group!r}] must map name -> tensor, got {type(named)}")
        for key, t in named.items():
            check_tensor(f"tensors[{group!r}][{key!r}]", key, t)


# ---------------------------------------------------------------------------------------------
# state.json


def encode_state(state: Mapping[str, Any]) -> bytes:
    """Serialize the caller's state; NaN and infinities are kept (as JSON's NaN/Infinity)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a JSON-able dict, got {type(state).__name__}")
    try:
        return json.dumps(dict(state), allow_nan=True, indent=None).encode("ascii")
    except (TypeError, ValueError, RecursionError) as e:
        raise TypeError(f"state is not JSON-serializable: {e or type(e).__name__}") from e


def decode_state(raw: bytes, name: str = STATE) -> dict[str, Any]:
    try:
        state = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # a forged file nests deep
        raise CheckpointCorrupt(f"{name}: not valid JSON ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointCorrupt(f"{name}: expected a JSON object, got {type(state).__name__}")
    return state


# ---------------------------------------------------------------------------------------------
# manifest.json


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's manifest says: the ids, sizes and hashes of its files, and its meta.

    `files` maps each file name to (size in bytes as stored, hex hash of the stored bytes).
    """

    id: str
    meta: dict[str, Any]
    files: dict[str, tuple[int, str]]
    created: float
    compression: str
    hash: str = "blake3"

    @property
    def nbytes(self) -> int:
        """Bytes the checkpoint takes in the store (manifest excluded)."""
        return sum(size for size, _ in self.files.values())

    @property
    def groups(self) -> list[str]:
        """The tensor groups saved, e.g. ['model', 'optimizer']."""
        return sorted(g for g in map(group_of, self.files) if g is not None)


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("ascii")


def encode_manifest(info: CheckpointInfo, manifest_hash: Any) -> bytes:
    """The manifest's bytes. `manifest_hash(data) -> hex` hashes its canonical form."""
    body: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "id": info.id,
        "created": info.created,
        "hash": info.hash,
        "compression": info.compression,
        "files": {n: {"size": s, "hash": h} for n, (s, h) in sorted(info.files.items())},
        "meta": info.meta,
    }
    body["manifest_hash"] = manifest_hash(_canonical(body))
    return json.dumps(body, indent=1, allow_nan=True).encode("ascii") + b"\n"


def decode_manifest(
    raw: bytes, ckpt_id: str, where: str, hashers: Mapping[str, Any]
) -> CheckpointInfo:
    """Parse and validate a manifest read from `where` (the path shown in errors).

    A newer format_version raises CheckpointFormatError; anything else that is wrong, including a
    manifest whose own hash does not match its content, raises CheckpointCorrupt.
    `hashers` maps a hash name to `fn(bytes) -> hex`.
    """

    def bad(why: str) -> CheckpointCorrupt:
        return CheckpointCorrupt(f"{where}: invalid checkpoint manifest: {why}")

    try:
        body = json.loads(raw, object_pairs_hook=strict_pairs)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"not valid JSON ({e})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise bad(f"'format' is not {FORMAT!r}")
    version = body.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{where}: checkpoint format version {version} was written by a newer hpsearch "
            f"(this one reads up to {FORMAT_VERSION}); upgrade hpsearch to read it"
        )
    algo = body.get("hash")
    if not isinstance(algo, str) or algo not in hashers:
        raise CheckpointFormatError(f"{where}: unknown hash {algo!r}; known: {sorted(hashers)}")
    claimed = body.pop("manifest_hash", None)
    if claimed != hashers[algo](_canonical(body)):
        raise bad("its own hash does not match its content (edited or corrupted)")
    compression = body.get("compression")
    if compression not in COMPRESSIONS:
        raise CheckpointFormatError(f"{where}: unknown compression {compression!r}")
    if body.get("id") != ckpt_id:
        raise bad(f"id {body.get('id')!r} does not match its directory {ckpt_id!r}")
    created = body.get("created")
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        raise bad(f"created {created!r} is not a number")
    meta = body.get("meta")
    if not isinstance(meta, dict):
        raise bad("meta is not an object")
    files = _decode_files(body.get("files"), compression, bad)
    return CheckpointInfo(
        id=ckpt_id,
        meta=meta,
        files=files,
        created=float(created),
        compression=compression,
        hash=algo,
    )


def _decode_files(
    files_raw: object, compression: str, bad: Callable[[str], CheckpointCorrupt]
) -> dict[str, tuple[int, str]]:
    """The manifest's `files`: names that are checkpoint files (never a path), each with
    {'size': int, 'hash': 64 hex digits}."""
    if not isinstance(files_raw, dict) or STATE not in files_raw:
        raise bad(f"files must be an object listing at least {STATE}")
    files: dict[str, tuple[int, str]] = {}
    for fname, entry in files_raw.items():
        if fname != STATE and group_of(fname) is None:
            raise bad(f"file name {fname!r} is not a checkpoint file")  # never a path
        if fname != STATE and fname.endswith(".zst") != (compression == "zstd"):
            raise bad(f"file {fname!r} does not fit compression {compression!r}")
        if not (
            isinstance(entry, dict)
            and is_nat(entry.get("size"))
            and isinstance(entry.get("hash"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["hash"])
        ):
            raise bad(f"file {fname!r}: entry must be {{'size': int, 'hash': 64 hex digits}}")
        files[fname] = (entry["size"], entry["hash"])
    return files
