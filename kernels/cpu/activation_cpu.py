"""The SwiGLU activation on a CPU in float32 as one C call (kernels/cpu/activation_cpu.c), its torch reference beside.

`silu_and_mul_cpu(gate_up)`: [T, 2 I] (gate | up, as the fused projection writes them) -> silu(gate) * up
[T, I], or None where the C kernel does not apply (another dtype, strided rows, the library not built), and
`silu_and_mul_torch` the reference. The CPU decode program calls the same C function from inside its team.
`isa`: the library's build (kvscope.kernels.cpu.c_library), KVSCOPE_CPU_ISA's where it is not given.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F

from kvscope.kernels.cpu.c_library import c_kernels, call_profiled, cpu_isa

_P, _I = ctypes.c_void_p, ctypes.c_int


@functools.cache
def _function(isa: str):
    lib = c_kernels("activation_cpu", isa)[0]
    if lib is None:
        return None
    fn = lib.kvscope_silu_and_mul_f32
    fn.argtypes, fn.restype = [_P, _P, _I, _I, _I], None
    return fn


def silu_and_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul_cpu(gate_up: torch.Tensor, isa: str | None = None) -> torch.Tensor | None:
    fn = _function(isa or cpu_isa())
    if (fn is None or gate_up.dtype is not torch.float32 or not gate_up.is_cpu or gate_up.dim() != 2
            or not gate_up.is_contiguous() or gate_up.shape[1] % 2):
        return None
    tokens, inter = gate_up.shape[0], gate_up.shape[1] // 2
    act = torch.empty(tokens, inter)
    call_profiled("kvscope::silu_and_mul_cpu", fn, gate_up.data_ptr(), act.data_ptr(), tokens, inter,
                  torch.get_num_threads())
    return act
