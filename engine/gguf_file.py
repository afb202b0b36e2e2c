"""Reading a whole GGUF file: all metadata (tokenizer arrays included) and raw tensor bytes.

The `gguf` package's GGUFReader builds a numpy view per field part (~250k of them for a
49k-token vocabulary, seconds of work); this parser reads the header with `struct` from a
memory map in a fraction of that and hands each tensor out as a uint8 array shaped
(rows..., bytes per row), ready for gguf.quants.dequantize. Sizes are checked against the
file, so a truncated file is reported as such instead of failing later.

Format (little-endian, versions 2 and 3): magic "GGUF", u32 version, u64 tensor count,
u64 kv count, kv pairs (string key, u32 type, value), tensor infos (string name, u32 n_dims,
u64 dims[n_dims] innermost first, u32 ggml type, u64 offset), padding to general.alignment,
tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The file is not GGUF, or is truncated or malformed (the message says which)."""


@dataclass(frozen=True, slots=True)
class GGUFTensorInfo:
    name: str
    dims: tuple[int, ...]   # ggml order: innermost (row length) first
    ggml_type: int
    offset: int             # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Torch / numpy order (outermost first)."""
        return tuple(reversed(self.dims))


@dataclass(slots=True)
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, GGUFTensorInfo] = field(default_factory=dict)
    data: np.ndarray | None = None  # uint8 memory map of the whole file

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as uint8 [rows..., bytes per row] (what gguf.quants.dequantize expects)."""
        info = self.tensors[name]
        assert self.data is not None
        flat = self.data[info.offset : info.offset + info.nbytes]
        outer = info.shape[:-1]
        return flat.reshape(*outer, -1) if outer else flat


class _Cursor:
    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.pos, self.size = buf, 0, size

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise GGUFFormatError(f"truncated file: {what} at byte {self.pos} runs past the end ({self.size} bytes)")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        length = self.scalar("<Q", what)
        self.need(length, what)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int, what: str) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind], what)
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            item_kind = self.scalar("<I", what)
            count = self.scalar("<Q", what)
            if item_kind in _NUMPY:
                dtype = np.dtype(_NUMPY[item_kind])
                self.need(count * dtype.itemsize, what)
                values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).tolist()
                self.pos += count * dtype.itemsize
                return values
            if item_kind in (_STRING, _ARRAY):
                return [self.value(item_kind, what) for _ in range(count)]
            raise GGUFFormatError(f"{what}: unknown array item type {item_kind}")
        raise GGUFFormatError(f"{what}: unknown value type {kind}")


def _tensor_nbytes(dims: tuple[int, ...], ggml_type: int, name: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise GGUFFormatError(f"tensor {name}: unknown ggml type {ggml_type}") from None
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if dims and dims[0] % block:
        raise GGUFFormatError(f"tensor {name}: row length {dims[0]} is not a multiple of the block size {block}")
    return count // block * type_size


def read_gguf_file(path: Path) -> GGUFFile:
    """Parse header, metadata and tensor infos; map the data. GGUFFormatError when malformed."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if magic != b"GGUF":
            raise GGUFFormatError(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        size = fh.seek(0, 2)
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(buf, size)
    cur.pos = 4
    version = cur.scalar("<I", "version")
    if version not in (2, 3):
        raise GGUFFormatError(f"unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors = cur.scalar("<Q", "tensor count")
    n_kv = cur.scalar("<Q", "metadata count")
    result = GGUFFile(path=Path(path), version=version)
    for _ in range(n_kv):
        key = cur.string("metadata key")
        kind = cur.scalar("<I", f"metadata {key}")
        result.metadata[key] = cur.value(kind, f"metadata {key}")
    infos = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.scalar("<I", f"tensor {name}")
        if n_dims > 8:
            raise GGUFFormatError(f"tensor {name}: {n_dims} dimensions")
        dims = tuple(cur.scalar("<Q", f"tensor {name}") for _ in range(n_dims))
        ggml_type = cur.scalar("<I", f"tensor {name}")
        offset = cur.scalar("<Q", f"tensor {name}")
        infos.append((name, dims, ggml_type, offset))
    alignment = int(result.metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // alignment) * alignment
    for name, dims, ggml_type, offset in infos:
        nbytes = _tensor_nbytes(dims, ggml_type, name)
        start = data_start + offset
        if start + nbytes > size:
            raise GGUFFormatError(
                f"truncated file: tensor {name} needs bytes {start}..{start + nbytes}, the file has {size}"
            )
        result.tensors[name] = GGUFTensorInfo(name, dims, ggml_type, start, nbytes)
    result.data = np.frombuffer(buf, dtype=np.uint8)
    return result
