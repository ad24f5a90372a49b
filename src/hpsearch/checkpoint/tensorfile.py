"""One safetensors file: its layout, written as a header plus zero-copy views of each tensor's
memory, and parsed strictly (from one buffer, or from a stream into one allocation per tensor).

Pure functions with no file I/O. Files are byte-identical to `safetensors.torch.save_file`'s.
Tensor bytes are written in the machine's byte order, which must be little-endian as the
safetensors format requires.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpsearch.checkpoint.strictjson import is_nat, strict_pairs
from hpsearch.errors import CheckpointCorrupt

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


def check_tensor(where: str, key: object, t: object) -> None:
    """Check one tensor of a group (`where` names it) before anything is written: its name,
    type, layout, device and dtype. Raises TypeError/ValueError saying what would fit."""
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
        raise ValueError(f"{where}: dtype {t.dtype} cannot be saved; supported: {supported}")


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
        header = json.loads(raw_header, object_pairs_hook=strict_pairs)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
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
        if not (isinstance(shape, list) and all(is_nat(d) for d in shape)):
            raise _bad(
                name, f"tensor {key!r}: shape {shape!r} is not a list of non-negative integers"
            )
        if not (isinstance(offs, list) and len(offs) == 2 and all(is_nat(o) for o in offs)):
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
    base = int(buf.storage_offset())  # int | SymInt in torch 2.14's stubs
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
    *,
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Read a `total`-byte safetensors file from a stream, each tensor into its own allocation.

    `readinto(view) -> n` fills a buffer as a file's `readinto` does; `seen` gets every byte
    read, in order (to hash them). Each tensor owns memory the allocator aligned, as a tensor
    the task built would: vectorised CPU kernels round by alignment, so tensors that were views
    at odd offsets of one buffer would not train bit for bit like the run that saved them. Peak
    memory is the tensors' bytes. Nothing is allocated beyond what the header declares and the
    header must describe exactly `total` bytes (`total` None: a decompressing stream, whose
    end the caller checks). `limit` bounds the file's size as the header declares it, checked
    before the header and the tensors are allocated. The caller must not use the tensors before
    it has checked the bytes' hash.
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
    if limit is not None and 8 + hlen > limit:
        raise _bad(name, f"header length {hlen} exceeds the {limit} bytes this file may hold")
    raw_header = bytearray(hlen)
    read(memoryview(raw_header))
    out: dict[str, torch.Tensor] = {}
    data_len = None if total is None else total - 8 - hlen
    entries = layout(bytes(raw_header), data_len, name)
    declared = 8 + hlen + (entries[-1][4] if entries else 0)
    if limit is not None and declared > limit:
        raise _bad(name, f"its header declares {declared} bytes, more than the {limit} it may hold")
    for key, dtype, shape, begin, end in entries:
        t = _empty(shape, dtype, end - begin)
        if end > begin:
            read(t.reshape(-1).view(torch.uint8).numpy().data)
        out[key] = t
    return out
