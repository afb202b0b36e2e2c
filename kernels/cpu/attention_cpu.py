"""Paged attention on a CPU in float32, one C call per layer for each kind of request
(kernels/cpu/attention_cpu.c).

`paged_decode_cpu` computes the one-token queries of the chosen requests, `paged_prefill_cpu` the several-token
ones (prompt chunks, drafts to verify: causal), over their paged K/V, reading the pools in place through the
block tables, and both write their rows of `out`. They are the torch backend's attention on a CPU
(kvscope.engine.model.attention); kvscope.kernels.reference.attention_torch is their reference, and handles
everything else (other dtypes, a machine where the library does not build). `isa`: the library's build
(kvscope.kernels.cpu.c_library), KVSCOPE_CPU_ISA's where it is not given.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from kvscope.kernels.cpu.c_library import c_kernels, call_profiled, cpu_isa

_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int


@functools.cache
def _functions(isa: str) -> dict | None:
    lib = c_kernels("attention_cpu", isa)[0]
    if lib is None:
        return None
    fns = {"decode": lib.kvscope_paged_decode_f32, "prefill": lib.kvscope_paged_prefill_f32}
    for fn in fns.values():
        fn.argtypes = [_P, _L, _P, _L, _P, _P, _P, _L, _P, _P, _P, _I, _I, _I, _I, _I, ctypes.c_float, _I]
        fn.restype = ctypes.c_int
    return fns


def paged_cpu_available(q: torch.Tensor, k_cache: torch.Tensor, isa: str | None = None) -> bool:
    """Whether paged_decode_cpu and paged_prefill_cpu take these queries and pools (float32 on a CPU, the library
    built)."""
    return (q.dtype is torch.float32 and k_cache.dtype is torch.float32 and q.device.type == "cpu"
            and _functions(isa or cpu_isa()) is not None)


def paged_decode_cpu(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     query_start_loc: torch.Tensor, seq_lens: torch.Tensor, requests: torch.Tensor, scale: float,
                     out: torch.Tensor, isa: str | None = None) -> None:
    """Fill out's rows of the decode `requests` (indices into the batch; one query token each). Layouts as in
    kvscope.kernels.reference.attention_torch; out [T, H, D] contiguous float32. Only inputs paged_cpu_available
    accepts (ValueError otherwise); other layouts of q, the pools and the index tensors are made contiguous."""
    _paged("decode", q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, requests, scale, out, isa)


def paged_prefill_cpu(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      query_start_loc: torch.Tensor, seq_lens: torch.Tensor, requests: torch.Tensor, scale: float,
                      out: torch.Tensor, isa: str | None = None) -> None:
    """Fill out's rows of the `requests` with several query tokens each (their new tokens, the last of their
    seq_lens positions, causal over their context). Otherwise as paged_decode_cpu."""
    _paged("prefill", q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, requests, scale, out, isa)


def _paged(kind: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           query_start_loc: torch.Tensor, seq_lens: torch.Tensor, requests: torch.Tensor, scale: float,
           out: torch.Tensor, isa: str | None) -> None:
    fns = _functions(isa or cpu_isa())
    name = f"paged_{kind}_cpu"
    if (fns is None or q.dtype is not torch.float32 or k_cache.dtype is not torch.float32
            or v_cache.dtype is not torch.float32 or not q.is_cpu):
        raise ValueError(f"{name} takes float32 queries and pools on a CPU, with the C library built")
    if out.dtype is not torch.float32 or not out.is_contiguous() or out.shape != q.shape:
        raise ValueError(f"{name} writes a contiguous float32 out shaped like q")
    heads, d = q.shape[1], q.shape[2]
    if q.stride(2) != 1 or q.stride(1) != d:
        q = q.contiguous()
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    tables, starts, lens, reqs = (t if t.dtype is torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous()
                                  for t in (block_tables, query_start_loc, seq_lens, requests))
    args = (q.data_ptr(), q.stride(0), out.data_ptr(), out.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
            tables.data_ptr(), tables.stride(0), starts.data_ptr(), lens.data_ptr(), reqs.data_ptr(), reqs.numel(),
            heads, k_cache.shape[2], d, k_cache.shape[1], scale, torch.get_num_threads())
    if call_profiled(f"kvscope::{name}", fns[kind], *args) != 0:
        raise MemoryError(f"{name}: scratch allocation failed")
