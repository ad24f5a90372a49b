"""The on-disk format of one checkpoint: safetensors files, `state.json` and `manifest.json`.

Pure functions with no file I/O, so every rule of the format is in one place and testable on bytes:

- ids and file names, checked by regular expressions before they are ever joined into a path;
- the safetensors layout, produced as a header plus zero-copy views of each tensor's memory (the
  caller streams them to a file, never building the whole file as one `bytes`), and parsed strictly
  from one buffer into zero-copy tensors;
- the manifest: the commit record listing every file with its size and hash, plus a hash of the
  manifest itself so that a flipped byte in it is caught too.

Tensor bytes are written in the machine's byte order, which must be little-endian as the
safetensors format requires.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpsearch.errors import CheckpointCorrupt, CheckpointFormatError

FORMAT = "hpsearch-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.json"
COMPRESSIONS = ("none", "zstd")

# Ids are joined into paths, so they must be one plain path component: no '/', no '.', no
# leading '-' or '_'. The same rule guards every entry point (save, load, delete, ...).
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
GROUP_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DATA_FILE_RE = re.compile(r"(?P<group>[a-z][a-z0-9_]{0,63})\.safetensors(?P<zst>\.zst)?")

# safetensors dtype names for the torch dtypes its torch binding supports. The list order is the
# safetensors `Dtype` enum order: files sort tensors by it (descending), then by name, which keeps
# every tensor aligned to its item size and makes our files byte-identical to `save_file`'s.
_DTYPE_ORDER: list[tuple[str, str]] = [
    ("BOOL", "bool"),
    ("U8", "uint8"),
    ("I8", "int8"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("I16", "int16"),
    ("U16", "uint16"),
    ("F16", "float16"),
    ("BF16", "bfloat16"),
    ("I32", "int32"),
    ("U32", "uint32"),
    ("F32", "float32"),
    ("C64", "complex64"),
    ("F64", "float64"),
    ("I64", "int64"),
    ("U64", "uint64"),
]
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in _DTYPE_ORDER if hasattr(torch, attr)
}
_DTYPE_NAMES: dict[torch.dtype, str] = {dt: name for name, dt in DTYPES.items()}
_DTYPE_RANK: dict[torch.dtype, int] = {
    DTYPES[name]: i for i, (name, _) in enumerate(_DTYPE_ORDER) if name in DTYPES
}
_ITEMSIZE: dict[torch.dtype, int] = {
    dt: torch.empty((), dtype=dt).element_size() for dt in _DTYPE_NAMES
}
_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces
_CHUNK = 8 << 20


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


# ---------------------------------------------------------------------------------------------
# Writing safetensors


@dataclass
class FilePlan:
    """One safetensors file ready to stream: the padded header, then each tensor's raw bytes.

    `parts` are memoryviews straight over the tensors' memory (no copy), in file order, so the
    tensors must not be mutated until the file is written.
    """

    header: bytes
    parts: list[memoryview]
    size: int


def check_tensors(tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Check every group name, tensor name and dtype before anything is written.

    Raises TypeError/ValueError naming the group and key and saying what would fit.
    """
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
            where = f"tensors[{group!r}][{key!r}]"
            if not isinstance(key, str) or not key or key == "__metadata__":
                raise ValueError(f"{where}: tensor names must be non-empty strings, not metadata")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: expected a torch.Tensor, got {type(t).__name__}")
            if t.layout != torch.strided:
                raise ValueError(f"{where}: {t.layout} tensors are not supported; call .to_dense()")
            if t.device.type == "meta":
                raise ValueError(f"{where}: a meta tensor holds no data to save")
            if t.dtype not in _DTYPE_NAMES:
                supported = ", ".join(str(d) for d in _DTYPE_NAMES)
                raise ValueError(
                    f"{where}: dtype {t.dtype} cannot be saved; supported: {supported}"
                )


def _raw_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor with t's values, viewed as flat uint8 (no copy when possible)."""
    t = t.detach().cpu()
    if t.is_complex():
        t = t.resolve_conj()
    t = t.resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8)


def plan_file(
    named: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> FilePlan:
    """Lay out one safetensors file exactly as `safetensors.torch.save_file` would.

    Tensors are sorted by dtype (widest first) then name; the JSON header is padded with spaces so
    the data starts 8-byte aligned. Call `check_tensors` first.
    """
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise RuntimeError("safetensors files are little-endian; big-endian hosts are unsupported")
    order = sorted(named.items(), key=lambda kv: (-_DTYPE_RANK[kv[1].dtype], kv[0]))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    parts: list[memoryview] = []
    offset = 0
    for key, t in order:
        raw = _raw_bytes(t)
        n = raw.numel()
        header[key] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        if n:
            parts.append(raw.numpy().data)
        offset += n
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return FilePlan(
        header=struct.pack("<Q", len(text)) + text, parts=parts, size=8 + len(text) + offset
    )


# ---------------------------------------------------------------------------------------------
# Reading safetensors


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return out


_Entry = tuple[str, torch.dtype, list[int], int, int]  # name, dtype, shape, begin, end


def _bad(name: str, why: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{name}: not a valid safetensors file: {why}")


def header_length(prefix: bytes, total: int | None, name: str) -> int:
    """The header length the first 8 bytes of a `total`-byte safetensors file declare (`total`
    None: a stream of unknown length, bounded by the format's header limit only)."""
    if (total is not None and total < 8) or len(prefix) < 8:
        raise _bad(name, f"{total} bytes is shorter than the 8-byte header length")
    (hlen,) = struct.unpack("<Q", prefix[:8])
    if hlen > _MAX_HEADER:
        raise _bad(name, f"header length {hlen} exceeds the format's limit of {_MAX_HEADER}")
    if total is not None and hlen > total - 8:
        raise _bad(name, f"header length {hlen} exceeds the file ({total} bytes)")
    return int(hlen)


def layout(raw_header: bytes, data_len: int | None, name: str) -> list[_Entry]:
    """Validate a safetensors header against the `data_len` bytes that follow it.

    Returns the tensors sorted by position. Every inconsistency raises CheckpointCorrupt naming
    `name`: only a header that exactly describes its bytes (no gap, no overlap, nothing left
    over) is accepted, so nothing is allocated beyond what the file holds. With `data_len`
    None (a stream of unknown length) the header's own spans say how long the data is, and the
    caller checks that the stream ends there.
    """
    try:
        header = json.loads(raw_header, object_pairs_hook=_strict_pairs)
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(name, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(name, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise _bad(name, "__metadata__ must map strings to strings")
    entries: list[_Entry] = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _bad(name, f"tensor {key!r}: entry must hold exactly dtype, shape, data_offsets")
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise _bad(name, f"tensor {key!r}: unknown dtype {entry['dtype']!r}")
        shape, offs = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(_is_nat(d) for d in shape)):
            raise _bad(
                name, f"tensor {key!r}: shape {shape!r} is not a list of non-negative integers"
            )
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_nat(o) for o in offs)):
            raise _bad(name, f"tensor {key!r}: data_offsets {offs!r} is not [begin, end]")
        begin, end = offs
        if end < begin or end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
            raise _bad(
                name,
                f"tensor {key!r}: data_offsets {offs} do not hold shape {shape} of "
                f"{entry['dtype']}",
            )
        entries.append((key, dtype, shape, begin, end))
    entries.sort(key=lambda e: (e[3], e[4]))
    pos = 0
    for key, _, _, begin, end in entries:
        if begin != pos:
            raise _bad(
                name, f"tensor {key!r}: data starts at {begin}, expected {pos} (gap or overlap)"
            )
        pos = end
    if data_len is not None and pos != data_len:
        raise _bad(
            name, f"tensor data covers {pos} bytes but the file holds {data_len} after the header"
        )
    return entries


def parse_file(buf: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """Parse a whole safetensors file held in the flat uint8 CPU tensor `buf` (as `verify` does).

    Returns tensors over `buf`'s memory (zero-copy; one that is not aligned to its item size is
    copied), each with its own autograd version counter. Every inconsistency raises
    CheckpointCorrupt naming `name`. To train on, prefer `read_file`, whose tensors each own an
    allocation of their own.
    """
    total = buf.numel()
    hlen = header_length(bytes(buf[:8].numpy()), total, name)
    start = 8 + hlen
    entries = layout(bytes(buf[8:start].numpy()), total - start, name)
    out: dict[str, torch.Tensor] = {}
    storage = buf.untyped_storage()
    base = buf.storage_offset()
    for key, dtype, shape, begin, end in entries:
        if begin == end:
            out[key] = torch.empty(shape, dtype=dtype)
            continue
        at = base + start + begin
        if at % _ITEMSIZE[dtype]:
            # another writer's unaligned layout: copy rather than fail
            out[key] = buf[start + begin : start + end].clone().view(dtype).reshape(shape)
            continue
        out[key] = _alias(storage, at // _ITEMSIZE[dtype], dtype, shape)
    return out


def _alias(
    storage: torch.UntypedStorage, offset: int, dtype: torch.dtype, shape: list[int]
) -> torch.Tensor:
    """A tensor over `storage` that is not an autograd view of the file's buffer.

    Views share their base's version counter, so an in-place update of one tensor (BatchNorm's
    running statistics in the forward pass) would bump the version of every other one. `set_`
    gives each tensor its own counter with no copy.
    """
    t = torch.empty(0, dtype=dtype)
    stride = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        stride[i] = stride[i + 1] * max(shape[i + 1], 1)
    return t.set_(storage, offset, shape, stride)


_ALIGN = 64  # what torch's CPU allocator gives every tensor
_BIG = 1 << 20


def _empty(shape: list[int], dtype: torch.dtype, nbytes: int) -> torch.Tensor:
    """A fresh tensor aligned as torch aligns its own (vectorised kernels round by alignment).

    Large ones come from NumPy, offset to a 64-byte boundary: NumPy asks the kernel for
    transparent huge pages, which makes filling fresh memory several times faster."""
    try:
        if nbytes < _BIG:
            return torch.empty(shape, dtype=dtype)
        raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
        skip = -raw.ctypes.data % _ALIGN
        return torch.from_numpy(raw[skip : skip + nbytes]).view(dtype).reshape(shape)
    except RuntimeError as e:  # torch's allocator says "can't allocate memory" this way
        raise MemoryError(str(e)) from None


def read_file(
    readinto: Callable[[memoryview], int],
    total: int | None,
    name: str,
    seen: Callable[[memoryview], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Read a `total`-byte safetensors file from a stream, each tensor into its own allocation.

    `readinto(view) -> n` fills a buffer as a file's `readinto` does; `seen` gets every byte
    read, in order (to hash them). Each tensor owns memory the allocator aligned, as a tensor
    the task built would: vectorised CPU kernels round by alignment, so tensors that were views
    at odd offsets of one buffer would not train bit for bit like the run that saved them. Peak
    memory is the tensors' bytes. Nothing is allocated beyond what the header declares and the
    header must describe exactly `total` bytes (`total` None: a decompressing stream, whose
    end the caller checks). The caller must not use the tensors before it has checked the
    bytes' hash.
    """

    def read(view: memoryview) -> None:
        for start in range(0, len(view), _CHUNK):  # so hashing chunk k overlaps reading k+1
            chunk = view[start : start + _CHUNK]
            pos = 0
            while pos < len(chunk):
                got = readinto(chunk[pos:])
                if not got:
                    raise _bad(name, f"ends after {start + pos} of {len(view)} bytes")
                pos += got
            if seen is not None:
                seen(chunk)

    prefix = bytearray(8)
    read(memoryview(prefix))
    hlen = header_length(bytes(prefix), total, name)
    raw_header = bytearray(hlen)
    read(memoryview(raw_header))
    out: dict[str, torch.Tensor] = {}
    data_len = None if total is None else total - 8 - hlen
    for key, dtype, shape, begin, end in layout(bytes(raw_header), data_len, name):
        t = _empty(shape, dtype, end - begin)
        if end > begin:
            read(t.reshape(-1).view(torch.uint8).numpy().data)
        out[key] = t
    return out


def _is_nat(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


# ---------------------------------------------------------------------------------------------
# state.json


def encode_state(state: Mapping[str, Any]) -> bytes:
    """Serialize the caller's state; NaN and infinities are kept (as JSON's NaN/Infinity)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a JSON-able dict, got {type(state).__name__}")
    try:
        return json.dumps(dict(state), allow_nan=True, indent=None).encode("ascii")
    except (TypeError, ValueError) as e:
        raise TypeError(f"state is not JSON-serializable: {e}") from e


def decode_state(raw: bytes, name: str = STATE) -> dict[str, Any]:
    try:
        state = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
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
        body = json.loads(raw, object_pairs_hook=_strict_pairs)
    except (UnicodeDecodeError, ValueError) as e:
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
    files_raw = body.get("files")
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
            and _is_nat(entry.get("size"))
            and isinstance(entry.get("hash"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["hash"])
        ):
            raise bad(f"file {fname!r}: entry must be {{'size': int, 'hash': 64 hex digits}}")
        files[fname] = (entry["size"], entry["hash"])
    return CheckpointInfo(
        id=ckpt_id,
        meta=meta,
        files=files,
        created=float(created),
        compression=compression,
        hash=algo,
    )
