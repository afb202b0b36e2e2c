"""The GGUF header walk, shared by the model loader (kvscope.engine.checkpoint.gguf_file: every value, then
the tensor data) and the one-shot commands (kvscope.engine.checkpoint.gguf_metadata: metadata and shapes
only, long arrays skipped). Pure Python (struct): the one-shot commands import neither numpy nor
torch.

Format (little-endian, versions 2 and 3): magic "GGUF", u32 version, u64 tensor count,
u64 kv count, kv pairs (string key, u32 type, value), tensor infos (string name, u32 n_dims,
u64 dims[n_dims] innermost first, u32 ggml type, u64 offset from the data start), padding to
general.alignment, tensor data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
MAX_DIMS = 8


class GGUFError(ValueError):
    """The file is not GGUF, or its header is truncated or malformed (the message says which and where)."""


@dataclass(frozen=True, slots=True)
class ArrayLength:
    """Stand-in for a long array that was skipped: only its length."""

    length: int


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dims: tuple[int, ...]   # ggml order: innermost (row length) first
    ggml_type: int
    offset: int             # from the start of the tensor data


class HasDims(Protocol):
    """A tensor entry of either reader (TensorEntry here, GGUFTensorInfo in kvscope.engine.checkpoint.gguf_file)."""

    @property
    def dims(self) -> tuple[int, ...]: ...


def num_elements(entries: Iterable[HasDims]) -> int:
    """Values in all the tensors (the model's parameter count when they are its weights)."""
    total = 0
    for entry in entries:
        n = 1
        for d in entry.dims:
            n *= d
        total += n
    return total


@dataclass(slots=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    end: int = 0  # the byte after the last tensor info

    def num_elements(self) -> int:
        """Parameters in all tensors."""
        return num_elements(self.tensors.values())

    @property
    def data_start(self) -> int:
        """Where the tensor data begins: the header's end rounded up to general.alignment."""
        alignment = int(self.metadata.get("general.alignment", 32))
        return -(-self.end // alignment) * alignment


class _Cursor:
    __slots__ = ("buf", "keep_array_max", "pos", "size")

    def __init__(self, buf: Any, size: int, keep_array_max: int | None) -> None:
        self.buf, self.pos, self.size, self.keep_array_max = buf, 0, size, keep_array_max

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise GGUFError(f"truncated file: {what} at byte {self.pos} runs past the end ({self.size} bytes)")

    def scalar(self, code: str, what: str) -> Any:
        fmt = "<" + code
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        length = self.scalar("Q", what)
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
            item_kind = self.scalar("I", what)
            count = self.scalar("Q", what)
            if self.keep_array_max is not None and count > self.keep_array_max:
                self.skip_array(item_kind, count, what)
                return ArrayLength(count)
            if item_kind in _SCALARS:
                fmt = f"<{count}{_SCALARS[item_kind]}"
                n = struct.calcsize(fmt)
                self.need(n, what)
                values = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += n
                return values
            return [self.value(item_kind, what) for _ in range(count)]
        raise GGUFError(f"{what}: unknown value type {kind}")

    def skip_array(self, item_kind: int, count: int, what: str) -> None:
        if item_kind in _SCALARS:
            n = struct.calcsize("<" + _SCALARS[item_kind]) * count
            self.need(n, what)
            self.pos += n
        elif item_kind == _STRING:
            for _ in range(count):
                length = self.scalar("Q", what)
                self.need(length, what)
                self.pos += length
        else:
            for _ in range(count):
                self.value(item_kind, what)


def parse_gguf_header(buf: Any, size: int, keep_array_max: int | None = None) -> GGUFHeader:
    """Walk the header in `buf` (bytes or a memory map of `size` bytes). Arrays longer than
    `keep_array_max` come back as ArrayLength (None keeps every array). Raises GGUFError."""
    if size < 4 or bytes(buf[:4]) != b"GGUF":
        raise GGUFError(f"not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    cur = _Cursor(buf, size, keep_array_max)
    cur.pos = 4
    version = cur.scalar("I", "version")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors = cur.scalar("Q", "tensor count")
    n_kv = cur.scalar("Q", "metadata count")
    header = GGUFHeader(version=version)
    for _ in range(n_kv):
        key = cur.string("metadata key")
        kind = cur.scalar("I", f"metadata {key}")
        header.metadata[key] = cur.value(kind, f"metadata {key}")
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.scalar("I", f"tensor {name}")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"tensor {name}: {n_dims} dimensions")
        dims = tuple(cur.scalar("Q", f"tensor {name}") for _ in range(n_dims))
        ggml_type = cur.scalar("I", f"tensor {name}")
        offset = cur.scalar("Q", f"tensor {name}")
        header.tensors[name] = TensorEntry(name, dims, ggml_type, offset)
    header.end = cur.pos
    return header
