"""Attention backends: the seam between the model and the paged-attention kernels.

The model runner builds one AttentionMetadata per step; every attention layer
(kvscope.engine.model.llama.PagedAttention, bound to its pools and the backend once)
calls `backend.write_kv(k, v, k_cache, v_cache, meta)` to store the new K/V
through the slot mapping, then `backend.attend(q, k_cache, v_cache, meta, scale)`
to attend over the paged cache (two calls, so each is timed as its own kernel).

The backend also serves the model's other ops: `linear(x, weight)`, the product of every linear layer and
the LM head (kvscope's C matmul, kvscope.kernels.cpu.linear_cpu, for float32 on a CPU; F.linear elsewhere),
and `fused_ops`, its RMSNorm / RoPE / SwiGLU kernels where it has them (None: the model's own torch code).
The C kernels a backend uses are of one build (`isa`, KVSCOPE_CPU_ISA's when it is made;
kvscope.kernels.cpu.c_library).

Backends: `torch` (reference kernels, the CPU default) and `triton`
(kvscope.kernels.triton.attention_triton; on CPU it needs TRITON_INTERPRET=1).
`auto` picks triton on CUDA and torch elsewhere.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from kvscope.kernels.cpu.attention_cpu import paged_cpu_available, paged_decode_cpu, paged_prefill_cpu
from kvscope.kernels.cpu.c_library import cpu_isa
from kvscope.kernels.cpu.linear_cpu import linear as linear_c
from kvscope.kernels.cpu.norm_rope_cpu import cpu_fused_ops
from kvscope.kernels.reference.attention_torch import (
    AttentionPlan,
    paged_attention_torch,
    plan_paged_attention,
    write_kv_cache_torch,
)


@dataclass(slots=True)
class AttentionMetadata:
    """Everything attention needs for one flat, unpadded batch (see kernels/reference/attention_torch.py)."""

    slot_mapping: torch.Tensor      # [T] int64
    block_tables: torch.Tensor      # [B, max_blocks] int32
    query_start_loc: torch.Tensor   # [B + 1] int32
    seq_lens: torch.Tensor          # [B] int32
    query_lens_host: list[int]
    seq_lens_host: list[int]
    max_query_len: int
    max_seq_len: int
    block_tables_host: list[list[int]] | None = None
    all_slots_valid: bool = False   # no slot is -1 (no padding tokens): the KV write needs no filter
    torch_plan: AttentionPlan | None = None  # the torch backend's plan, made by the step's first layer


Matmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [T, in], weight [out, in]) -> x @ weight.T


def matmul_for(device: torch.device | str, dtype: torch.dtype, isa: str) -> Matmul:
    """The linear layers' product: kvscope's C matmul of build `isa` for float32 on a CPU (F.linear for the
    inputs it does not take, or where it does not build), F.linear elsewhere."""
    if torch.device(device).type == "cpu" and dtype == torch.float32:
        return functools.partial(linear_c, isa=isa)
    return F.linear


class FusedOps(Protocol):
    """A backend's fused kernels, which the model calls instead of its own torch code. A backend may also offer
    `silu_and_mul(gate_up) -> silu(gate) * up` (the model looks it up with getattr)."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    def rope(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
             cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class AttentionBackend(Protocol):
    name: str
    linear: Matmul  # the linear layers' product (matmul_for)

    @property
    def fused_ops(self) -> FusedOps | None:
        """rms_norm(x, w, eps) and rope(q, k, positions, cos_sin), or None (the model's own torch code)."""
        ...

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, meta: AttentionMetadata) -> None:
        """k/v [T, KVH, D] into the pools at meta.slot_mapping."""
        ...

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """q [T, H, D] -> [T, H, D], causal over each request's paged context."""
        ...


class TorchAttention:
    name = "torch"

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        # a float32 model on a CPU: the C RMSNorm / RoPE when they build (kvscope.kernels.cpu.norm_rope_cpu);
        # anything else: the model's own torch code (for 16-bit dtypes it rounds as Hugging Face's does)
        on_cpu = torch.device(device).type == "cpu" and dtype == torch.float32
        self.isa = cpu_isa()
        self.fused_ops = cpu_fused_ops(self.isa) if on_cpu else None
        self.linear = matmul_for(device, dtype, self.isa)

    def write_kv(self, k, v, k_cache, v_cache, meta: AttentionMetadata) -> None:
        write_kv_cache_torch(k, v, k_cache, v_cache, meta.slot_mapping, all_valid=meta.all_slots_valid)

    def attend(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.torch_plan is None:  # made by the step's first layer, for every layer
            meta.torch_plan = plan_paged_attention(meta.block_tables, meta.query_lens_host, meta.seq_lens_host,
                                                   k_cache.shape[1], meta.block_tables_host,
                                                   torch_kernels=not paged_cpu_available(q, k_cache, self.isa))
        plan = meta.torch_plan
        if plan.decode or plan.chunks:
            return paged_attention_torch(
                q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens, scale, plan=plan,
            )
        # the C kernels (kvscope.kernels.cpu.attention_cpu) write every request's rows; padding rows after them stay
        # unwritten, never read
        out = torch.empty(q.shape, dtype=q.dtype)
        if plan.decode_requests is not None:  # one-token requests: one C call
            paged_decode_cpu(q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
                             plan.decode_requests, scale, out, self.isa)
        if plan.chunk_requests is not None:  # prompt chunks and drafts to verify: one more
            paged_prefill_cpu(q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
                              plan.chunk_requests, scale, out, self.isa)
        return out


class TritonAttention:
    """Triton kernels (kvscope.kernels.triton.attention_triton), imported on first use: triton is optional."""

    name = "triton"

    def __init__(self, device: torch.device | str = "cuda", dtype: torch.dtype = torch.float32) -> None:
        from kvscope.kernels.triton import attention_triton, norm_rope_triton

        self._kernels = attention_triton
        self.fused_ops = TritonFusedOps(norm_rope_triton)
        self.linear = matmul_for(device, dtype, cpu_isa())  # F.linear on CUDA; on a CPU (the interpreter) as torch's

    def write_kv(self, k, v, k_cache, v_cache, meta: AttentionMetadata) -> None:
        self._kernels.write_kv_cache_triton(k, v, k_cache, v_cache, meta.slot_mapping)

    def attend(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        return self._kernels.paged_attention_triton(
            q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens, scale,
            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len,
        )


class TritonFusedOps:
    """RMSNorm and RoPE as single Triton launches (the model calls these when the backend offers them)."""

    def __init__(self, kernels) -> None:
        self._kernels = kernels

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self._kernels.rms_norm_triton(x, weight, eps)

    def rope(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
             cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._kernels.apply_rope_triton(q, k, positions, cos_sin)


def backend_refusal(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device` (None: it can): Triton needs CUDA, or its interpreter on a CPU."""
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (f"triton runs on a CUDA device, or on a CPU under TRITON_INTERPRET=1 (the Triton interpreter); "
                f"this run is on {device.type}: use torch or auto")
    return None


def resolve_backend_name(name: str, device: torch.device) -> str:
    """`auto` -> `triton` on CUDA, `torch` elsewhere."""
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return name


def make_attention_backend(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> AttentionBackend:
    name = resolve_backend_name(name, device)
    if name == "torch":
        return TorchAttention(device, dtype)
    if name == "triton":
        return TritonAttention(device, dtype)
    raise ValueError(f"unknown attention backend {name!r} (expected torch, triton or auto)")
