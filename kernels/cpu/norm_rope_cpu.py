"""RMSNorm and RoPE on a CPU in float32 as single C calls (kernels/cpu/norm_rope_cpu.c), torch references beside.

`cpu_fused_ops()` (a CpuFusedOps, or None where the library does not build) is what the torch backend
offers the model on a CPU, through the `fused_ops` interface the Triton backend fills with its kernels:
`rms_norm(x, weight, eps)` and `rope(q, k, positions, cos_sin)`. Inputs the C kernels do not take
(another dtype, a strided last dimension, int32 positions) go to kvscope.kernels.reference.norm_rope_torch.
A SmolLM2 decode step has 61 RMSNorms and 30 RoPEs: each a handful of torch ops, or one C call. `isa`: the
library's build (kvscope.kernels.cpu.c_library), KVSCOPE_CPU_ISA's where it is not given; a CpuFusedOps
keeps its own.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from kvscope.kernels.cpu.activation_cpu import silu_and_mul_cpu, silu_and_mul_torch
from kvscope.kernels.cpu.c_library import c_kernels, call_profiled, cpu_isa
from kvscope.kernels.reference.norm_rope_torch import apply_rope_torch, rms_norm_torch

_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int


@functools.cache
def _functions(isa: str) -> tuple | None:
    lib = c_kernels("norm_rope_cpu", isa)[0]
    if lib is None:
        return None
    norm, rope = lib.kvscope_rms_norm_f32, lib.kvscope_rope_f32
    norm.argtypes, norm.restype = [_P, _L, _P, _P, _I, _I, ctypes.c_float, _I], None
    rope.argtypes, rope.restype = [_P, _L, _L, _I, _P, _L, _L, _I, _P, _P, _I, _I], None
    return norm, rope


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float, isa: str | None = None) -> torch.Tensor | None:
    """x [T, H] (unit-stride rows) -> a new [T, H]; None where the C kernel does not apply."""
    fns = _functions(isa or cpu_isa())
    if (fns is None or x.dtype is not torch.float32 or weight.dtype is not torch.float32 or x.dim() != 2
            or x.stride(1) != 1 or not weight.is_contiguous() or not x.is_cpu or not weight.is_cpu
            or weight.numel() != x.shape[1]):
        return None
    y = torch.empty(x.shape)
    call_profiled("kvscope::rms_norm_cpu", fns[0], x.data_ptr(), x.stride(0), weight.data_ptr(), y.data_ptr(),
                  x.shape[0], x.shape[1], eps, torch.get_num_threads())
    return y


def rope_cpu_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
              isa: str | None = None) -> bool:
    """Rotate q [T, H, D] and k [T, KVH, D] in place; False (nothing done) where the C kernel does not apply.
    Every position must be a row of cos_sin (the engine keeps positions below the model's max_positions)."""
    fns = _functions(isa or cpu_isa())
    if (fns is None or q.dtype is not torch.float32 or k.dtype is not torch.float32
            or cos_sin.dtype is not torch.float32 or positions.dtype is not torch.int64
            or q.stride(-1) != 1 or k.stride(-1) != 1 or not cos_sin.is_contiguous()
            or not positions.is_contiguous() or not (q.is_cpu and k.is_cpu and cos_sin.is_cpu and positions.is_cpu)
            or q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]
            or cos_sin.shape[-1] != q.shape[2] or positions.numel() != q.shape[0] or q.shape[2] % 2):
        return False
    fns[1](q.data_ptr(), q.stride(0), q.stride(1), q.shape[1], k.data_ptr(), k.stride(0), k.stride(1), k.shape[1],
           positions.data_ptr(), cos_sin.data_ptr(), q.shape[2], q.shape[0])
    return True


class CpuFusedOps:
    """The torch backend's fused ops on a CPU: the C kernels where they apply, the torch references elsewhere
    (and the SwiGLU activation, kvscope.kernels.cpu.activation_cpu, which the Triton backend does not offer), all
    of one build."""

    def __init__(self, isa: str) -> None:
        self.isa = isa

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        act = silu_and_mul_cpu(gate_up, self.isa)
        return silu_and_mul_torch(gate_up) if act is None else act

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y = rms_norm_cpu(x, weight, eps, self.isa)
        return rms_norm_torch(x, weight, eps) if y is None else y

    def rope(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
             cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k rotated: in place by the C kernel, as new tensors by the torch reference."""
        if rope_cpu_(q, k, positions, cos_sin, self.isa):
            return q, k
        return apply_rope_torch(q, k, positions, cos_sin)


def cpu_fused_ops(isa: str | None = None) -> CpuFusedOps | None:
    """The C RMSNorm / RoPE for a torch backend on a CPU, or None (the model's own torch code) without them."""
    isa = isa or cpu_isa()
    return CpuFusedOps(isa) if _functions(isa) is not None else None
