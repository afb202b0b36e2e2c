"""Reading a whole GGUF file: all metadata (tokenizer arrays included) and raw tensor bytes.

The `gguf` package's GGUFReader builds a numpy view per field part (~250k of them for a
49k-token vocabulary, seconds of work); here the header is walked with `struct` from a memory
map (kvscope.engine.checkpoint.gguf_header, shared with the one-shot commands) and each tensor is handed
out as a uint8 array shaped (rows..., bytes per row), ready for gguf.quants.dequantize. Sizes
are checked against the file, so a truncated file is reported as such instead of failing later.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kvscope.engine.checkpoint.gguf_header import GGUFError, parse_gguf_header


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


def _tensor_nbytes(dims: tuple[int, ...], ggml_type: int, name: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise GGUFError(f"tensor {name}: unknown ggml type {ggml_type}") from None
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if dims and dims[0] % block:
        raise GGUFError(f"tensor {name}: row length {dims[0]} is not a multiple of the block size {block}")
    return count // block * type_size


def read_gguf_file(path: Path) -> GGUFFile:
    """Parse header, metadata and tensor infos; map the data. GGUFError when malformed."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if magic != b"GGUF":  # before mapping: an empty file cannot be mapped
            raise GGUFError(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        size = fh.seek(0, 2)
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    header = parse_gguf_header(buf, size)
    result = GGUFFile(path=Path(path), version=header.version, metadata=header.metadata)
    data_start = header.data_start
    for name, entry in header.tensors.items():
        nbytes = _tensor_nbytes(entry.dims, entry.ggml_type, name)
        start = data_start + entry.offset
        if start + nbytes > size:
            raise GGUFError(
                f"truncated file: tensor {name} needs bytes {start}..{start + nbytes}, the file has {size}"
            )
        result.tensors[name] = GGUFTensorInfo(name, entry.dims, entry.ggml_type, start, nbytes)
    result.data = np.frombuffer(buf, dtype=np.uint8)
    return result
