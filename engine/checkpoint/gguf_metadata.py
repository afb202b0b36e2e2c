"""Metadata and tensor shapes of a GGUF file for the one-shot commands; tensor data is never read.

The `gguf` package's reader costs ~0.15 s to import (numpy and friends) and maps every tensor;
here the header is walked in pure Python (kvscope.engine.checkpoint.gguf_header, the walk the model loader
uses too) from a memory map, and large arrays (tokenizer vocabularies, merges) are skipped, only
their length kept (ArrayLength).
"""

from __future__ import annotations

import mmap

from kvscope.engine.checkpoint.gguf_header import ArrayLength, GGUFError, GGUFHeader, parse_gguf_header

KEEP_ARRAY_MAX = 64  # arrays longer than this are skipped; their length is kept as ArrayLength

__all__ = ["ArrayLength", "GGUFError", "GGUFHeader", "read_gguf_header"]


def read_gguf_header(path: str) -> GGUFHeader:
    """Metadata and tensor infos of a GGUF file; raises GGUFError (naming the file) if it is not one."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open ({exc.strerror})") from None
    with f:
        if f.read(4) != b"GGUF":  # before mapping: an empty file cannot be mapped
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
        size = f.seek(0, 2)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return parse_gguf_header(buf, size, KEEP_ARRAY_MAX)
            except GGUFError as exc:
                raise GGUFError(f"{path}: {exc}") from None
