"""Linear layers on a CPU: kvscope's C matmul (kernels/cpu/linear_cpu.c) for float32, F.linear as its reference.

`linear(x, weight)` computes x [T, in] @ weight[out, in].T. On a CPU in float32, with a contiguous weight
and unit-stride rows of x, it calls `kvscope_linear_f32` (built at first use by kvscope.kernels.cpu.c_library;
see the C file for its loop nest). Anything else, or a machine where the library cannot be built, goes to
F.linear. On the CPU we measured (AMD EPYC, AVX-512) it streams a decode step's weights at about 0.8 of
the read bandwidth (MKL's single-row product: about a third) and runs prompts 1.2-1.4x faster than MKL's
GEMM (MKL does not take its AVX-512 paths on AMD).

Under torch.profiler each call is a `kvscope::linear_cpu` range, so profiles still show the matmuls.
`linear_cpu_status()` says which path runs and why (the CLI and benchmarks print it). Every function takes the
library's build (`isa`: native, portable or avx512; kvscope.kernels.cpu.c_library), KVSCOPE_CPU_ISA's where
it is not given.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kvscope.kernels.cpu.c_library import c_kernels, call_profiled, cpu_isa


@functools.cache
def _kernel(isa: str) -> tuple[Callable | None, str]:
    """(the ctypes function or None, what float32 CPU matmuls use and why), loaded once per process and build."""
    lib, why_not = c_kernels("linear_cpu", isa)
    if lib is None:
        return None, f"F.linear ({why_not})"
    fn = lib.kvscope_linear_f32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    fn.restype = None
    return fn, "kvscope C kernel (float32)"


def linear_cpu_status(isa: str | None = None) -> str:
    """Which matmul float32 CPU steps use, e.g. 'kvscope C kernel (float32)' or 'F.linear (no C compiler ...)'."""
    return _kernel(isa or cpu_isa())[1]


def linear_cpu(x: torch.Tensor, weight: torch.Tensor, isa: str | None = None) -> torch.Tensor | None:
    """The C kernel's x @ weight.T, or None when it does not apply (dtype, device, layout, shapes, no library)."""
    fn = _kernel(isa or cpu_isa())[0]
    if (fn is None or x.dtype is not torch.float32 or weight.dtype is not torch.float32 or not x.is_cpu
            or not weight.is_cpu or x.dim() != 2 or x.stride(1) != 1 or x.shape[1] != weight.shape[1]
            or not weight.is_contiguous()):
        return None
    tokens, in_features = x.shape
    out_features = weight.shape[0]
    y = torch.empty(tokens, out_features)
    if tokens:
        args = (x.data_ptr(), x.stride(0), weight.data_ptr(), y.data_ptr(), tokens, out_features, in_features,
                torch.get_num_threads())
        call_profiled("kvscope::linear_cpu", fn, *args)
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, isa: str | None = None) -> torch.Tensor:
    """x [T, in] @ weight[out, in].T -> [T, out]: the C kernel where it applies, else F.linear."""
    y = linear_cpu(x, weight, isa) if x.is_cpu else None
    return F.linear(x, weight) if y is None else y
