"""The CPU decode program (kernels/cpu/decode_cpu.c): a float32 decode step, token ids to logits, in one C call.

`DecodeProgram(...)` binds, once, the model's weights, the layers' K/V pools, the step's metadata buffers and
the activation buffers (all float32 / int tensors that must outlive it) for a fixed number of tokens; `run()`
computes the step over whatever the buffers hold now: input_ids [T] in, logits [T, vocab] out (through the
embedding, every layer and the final norm). `op_times()` gives each op's measured (op index, layer, start,
end) from the last run, ns on time.perf_counter_ns's clock: indices 0-7 are a layer's ops (OPS_PER_LAYER, in
the program's order), STEP_OPS those outside the layers (layer -1). The kernels are those of linear_cpu,
norm_rope_cpu, activation_cpu and attention_cpu, of one build (`isa`, KVSCOPE_CPU_ISA's where not given:
kvscope.kernels.cpu.c_library); `decode_program_status()` says whether all five libraries build here and
`decode_program_available()` answers yes or no.

The program's struct is mirrored here in ctypes (_Program); the library is used only where the mirror has the
layout decode_cpu.c exports for it, field by field (kvscope.kernels.cpu.c_struct): on any difference the
program is off (one warning line), and the engine runs its steps without it.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any, ClassVar, TypedDict

import torch

from kvscope.kernels.cpu.c_library import c_kernels, cpu_isa

OPS_PER_LAYER = 8  # attn_norm, qkv, rope, kv_write, attention, o_proj, mlp_norm, mlp (the program's order)
STEP_OPS = {OPS_PER_LAYER: "embed", OPS_PER_LAYER + 1: "final_norm", OPS_PER_LAYER + 2: "lm_head"}  # op index: name

_I, _F, _L, _P = ctypes.c_int, ctypes.c_float, ctypes.c_long, ctypes.c_void_p


class _Program(ctypes.Structure):
    _fields_: ClassVar[list[tuple[str, type[ctypes._SimpleCData[Any]]]]] = [
        *[(name, _I) for name in ("tokens", "layers", "hidden", "q_size", "kv_size", "intermediate", "heads",
                                  "kv_heads", "head_dim", "block_size", "threads", "vocab")],
        ("eps", _F), ("scale", _F), ("final_eps", _F), ("bt_stride", _L),
        *[(name, _P) for name in ("input_ids", "embed", "final_norm", "lm_head", "logits", "attn_norm", "qkv",
                                  "o_proj", "mlp_norm", "gate_up", "down", "k_cache", "v_cache", "positions", "slots",
                                  "block_tables", "query_start_loc", "seq_lens", "requests", "cos_sin", "x", "h",
                                  "qkv_out", "attn_out", "gate_up_out", "act", "linear", "rms_norm", "silu_and_mul",
                                  "rope", "attend", "times", "step_times")]]


class _EntryPoints(TypedDict):
    """The team kernels' addresses (what the program's function-pointer fields hold) and the program's entry."""

    linear: int
    rms_norm: int
    silu_and_mul: int
    rope: int
    attend: int
    run: Callable[..., int]


def _address(lib: ctypes.CDLL, name: str) -> int:
    """The address of a function the library exports (never NULL: a missing one raises AttributeError)."""
    value = ctypes.cast(getattr(lib, name), _P).value
    assert value is not None
    return value


@functools.cache
def _entry_points(isa: str) -> tuple[_EntryPoints | None, str]:
    """(addresses of the team kernels and the program itself, "") for build `isa`, or (None, why not: a library
    that does not build, or a struct mirrored wrongly)."""
    loaded = {"linear": c_kernels("linear_cpu", isa), "norm_rope": c_kernels("norm_rope_cpu", isa),
              "attention": c_kernels("attention_cpu", isa), "activation": c_kernels("activation_cpu", isa),
              "decode": c_kernels("decode_cpu", isa, structs=(("DecodeProgram", _Program),))}
    libs: dict[str, ctypes.CDLL] = {}
    for name, (lib, why_not) in loaded.items():
        if lib is None:
            return None, why_not
        libs[name] = lib
    address = lambda lib, name: _address(libs[lib], name)
    run = libs["decode"].kvscope_decode_program_f32
    run.argtypes, run.restype = [ctypes.POINTER(_Program)], _I
    return {"linear": address("linear", "kvscope_linear_f32_team"),
            "rms_norm": address("norm_rope", "kvscope_rms_norm_f32_team"),
            "silu_and_mul": address("activation", "kvscope_silu_and_mul_f32_team"),
            "rope": address("norm_rope", "kvscope_rope_f32"),
            "attend": address("attention", "kvscope_paged_decode_f32_team"), "run": run}, ""


def decode_program_status(isa: str | None = None) -> str:
    """'kvscope C decode program' where it runs here (build `isa`, KVSCOPE_CPU_ISA's by default), else why not."""
    entry, why_not = _entry_points(isa or cpu_isa())
    return "kvscope C decode program" if entry is not None else f"off ({why_not})"


def decode_program_available(isa: str | None = None) -> bool:
    return _entry_points(isa or cpu_isa())[0] is not None


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (_P * len(tensors))(*[t.data_ptr() for t in tensors])


class DecodeProgram:
    """A bound decode-step program (see the module docstring). Every tensor given must stay alive and in place
    as long as the program is used; weights and pools contiguous float32, metadata int64 (positions, slots)
    or int32 (block tables, query starts, context lengths, request ids)."""

    def __init__(self, *, tokens: int, layers: list[dict[str, torch.Tensor]], k_caches: list[torch.Tensor],
                 v_caches: list[torch.Tensor], heads: int, kv_heads: int, head_dim: int, eps: float, scale: float,
                 embed: torch.Tensor, final_norm: torch.Tensor, final_eps: float, lm_head: torch.Tensor,
                 input_ids: torch.Tensor, logits: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                 block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                 requests: torch.Tensor, cos_sin: torch.Tensor, x: torch.Tensor, h: torch.Tensor,
                 qkv_out: torch.Tensor, attn_out: torch.Tensor, gate_up_out: torch.Tensor, act: torch.Tensor,
                 isa: str | None = None) -> None:
        entry, why_not = _entry_points(isa or cpu_isa())
        if entry is None:
            raise RuntimeError(f"the CPU decode program cannot run here: {why_not}")
        self._run = entry["run"]
        hidden = x.shape[1]
        self.times = torch.zeros(len(layers), OPS_PER_LAYER, 2, dtype=torch.int64)
        self.step_times = torch.zeros(len(STEP_OPS), 2, dtype=torch.int64)
        self._keep = [_pointers([w[name] for w in layers]) for name in
                      ("attn_norm", "qkv", "o_proj", "mlp_norm", "gate_up", "down")]
        self._keep += [_pointers(k_caches), _pointers(v_caches)]
        p = self._program = _Program(
            tokens=tokens, layers=len(layers), hidden=hidden, q_size=heads * head_dim,
            kv_size=kv_heads * head_dim, intermediate=act.shape[1], heads=heads, kv_heads=kv_heads,
            head_dim=head_dim, block_size=k_caches[0].shape[1], threads=torch.get_num_threads(), eps=eps,
            vocab=embed.shape[0], scale=scale, final_eps=final_eps, bt_stride=block_tables.stride(0))
        for name, arr in zip(("attn_norm", "qkv", "o_proj", "mlp_norm", "gate_up", "down", "k_cache", "v_cache"),
                             self._keep):
            setattr(p, name, ctypes.cast(arr, _P))
        for name, t in (("input_ids", input_ids), ("embed", embed), ("final_norm", final_norm), ("lm_head", lm_head),
                        ("logits", logits), ("step_times", self.step_times), ("positions", positions),
                        ("slots", slots), ("block_tables", block_tables),
                        ("query_start_loc", query_start_loc), ("seq_lens", seq_lens), ("requests", requests),
                        ("cos_sin", cos_sin), ("x", x), ("h", h), ("qkv_out", qkv_out), ("attn_out", attn_out),
                        ("gate_up_out", gate_up_out), ("act", act), ("times", self.times)):
            setattr(p, name, t.data_ptr())
        p.linear, p.rms_norm, p.silu_and_mul, p.rope, p.attend = (
            entry["linear"], entry["rms_norm"], entry["silu_and_mul"], entry["rope"], entry["attend"])
        self._ref = ctypes.byref(p)

    def run(self) -> None:
        """The step over the buffers' current contents (the thread count is torch's, read now)."""
        self._program.threads = torch.get_num_threads()
        status = self._run(self._ref)
        if status == -2:
            raise IndexError(f"the CPU decode program: a token id outside the vocabulary (0 to "
                             f"{self._program.vocab - 1})")
        if status != 0:
            raise MemoryError("the CPU decode program could not allocate its scratch")

    def op_times(self) -> list[tuple[int, int, int, int]]:
        """(op index, layer, start ns, end ns) of the last run, in the program's order (see the module docstring)."""
        (embed, final_norm, lm_head), rows = self.step_times.tolist(), self.times.tolist()
        layers = [(i, layer, start, end) for layer, ops in enumerate(rows) for i, (start, end) in enumerate(ops)]
        return [(OPS_PER_LAYER, -1, *embed), *layers, (OPS_PER_LAYER + 1, -1, *final_norm),
                (OPS_PER_LAYER + 2, -1, *lm_head)]
