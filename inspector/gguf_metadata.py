"""A small GGUF header reader: key/value metadata and tensor infos, never tensor data.

The `gguf` package's reader costs ~0.15 s to import (numpy and friends) and
memory-maps the whole file; the one-shot CLI needs only the header, so this
reads it with `struct` from the start of the file. Large arrays (tokenizer
vocabularies, merges) are skipped, recording only their length.

Format (little-endian, versions 2 and 3): magic "GGUF", u32 version,
u64 tensor count, u64 kv count, then kv pairs (string key, u32 type, value),
then tensor infos (string name, u32 n_dims, u64 dims[n_dims], u32 type, u64 offset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY_MAX = 64  # arrays longer than this are skipped; their length is kept as ArrayLength


class GGUFError(ValueError):
    """The file is not a GGUF file, or its header is truncated or malformed."""


@dataclass(frozen=True, slots=True)
class ArrayLength:
    """Stand-in for a long array that was skipped: only its length."""

    length: int


@dataclass(slots=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> dims (ggml order)

    def num_elements(self) -> int:
        total = 0
        for dims in self.tensors.values():
            n = 1
            for d in dims:
                n *= d
            total += n
        return total


class _Reader:
    __slots__ = ("f", "path")

    def __init__(self, f: BinaryIO, path: str) -> None:
        self.f, self.path = f, path

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError(f"{self.path}: truncated GGUF header")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 26:
            raise GGUFError(f"{self.path}: implausible string length {n} in GGUF header")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if count <= _KEEP_ARRAY_MAX:
                return [self.value(item_type) for _ in range(count)]
            self.skip_array(item_type, count)
            return ArrayLength(count)
        raise GGUFError(f"{self.path}: unknown GGUF value type {vtype}")

    def skip_array(self, item_type: int, count: int) -> None:
        if item_type in _SCALARS:
            self.f.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
        elif item_type == _STRING:
            for _ in range(count):
                self.f.seek(self.unpack("<Q"), 1)
        else:
            for _ in range(count):
                self.value(item_type)


def read_gguf_header(path: str) -> GGUFHeader:
    """Metadata and tensor shapes of a GGUF file; raises GGUFError (naming the file) if it is not one."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open ({exc.strerror})") from None
    with f:
        r = _Reader(f, path)
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        header = GGUFHeader(version=version)
        for _ in range(n_kv):
            key = r.string()
            header.metadata[key] = r.value(r.unpack("<I"))
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            if n_dims > 8:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions")
            dims = tuple(r.unpack("<Q") for _ in range(n_dims))
            r.unpack("<I")  # ggml type
            r.unpack("<Q")  # data offset
            header.tensors[name] = dims
        return header
