"""The CPU's decode programs: a decode step's layers as one C call (kvscope.kernels.cpu.decode_cpu), per batch size.

What CUDA graphs are to a GPU (kvscope.engine.worker.cuda_graphs), and built on the same static, padded buffers:
a float32 decode-only step on a CPU copies its inputs there, pads up the size ladder and runs the whole
forward pass, embedding to logits, in one C call (no Python between the step's weights streaming through
the caches and its logits: each Python call after that costs tens of microseconds in cache misses). Steps
with prompt chunks, drafts to verify or padding tokens, and batches above the ladder, run the model
eagerly. The per-op kernel events stay measured: the program stamps each op (the op timer takes them
through `op_records`).

The engine uses it by default where it applies: a float32 model on a CPU with the torch attention backend,
its C RMSNorm / RoPE in place, and the five C libraries built (`KVSCOPE_CPU_KERNELS=0` turns all of them
off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict, cast

import torch

from kvscope.costmodel.roofline import LAYER_OPS
from kvscope.engine.model.forward_context import ForwardContext
from kvscope.engine.worker.cuda_graphs import DecodeGraphs
from kvscope.kernels.cpu.decode_cpu import STEP_OPS, DecodeProgram, decode_program_available

if TYPE_CHECKING:
    from collections.abc import Iterable

    from kvscope.engine.model.llama import DecoderLayer, LlamaModel

PROGRAM_OPS = {**dict(enumerate(LAYER_OPS)), **STEP_OPS}  # the program's op indices: their op names


class _ActivationBuffers(TypedDict):
    """The programs' activation buffers, by their DecodeProgram argument names."""

    h: torch.Tensor
    qkv_out: torch.Tensor
    attn_out: torch.Tensor
    gate_up_out: torch.Tensor
    act: torch.Tensor


class CpuDecodePrograms(DecodeGraphs):
    """Decode programs by batch size over DecodeGraphs' static buffers (see the module docstring)."""

    measures_ops = True  # the op timer takes the program's own per-op times (op_records)

    def __init__(self, model: LlamaModel, kv_layers: list[tuple[torch.Tensor, torch.Tensor]],
                 max_num_seqs: int, max_model_len: int, block_size: int) -> None:
        super().__init__(model, torch.device("cpu"), max_num_seqs, max_model_len, block_size, capture=False)
        cfg = model.config
        top = self.sizes[-1]
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.x = torch.zeros(top, cfg.hidden_size)  # the residual stream, in place through the layers
        buffers: _ActivationBuffers = {
            "h": torch.zeros(top, cfg.hidden_size), "qkv_out": torch.zeros(top, q_size + 2 * kv_size),
            "attn_out": torch.zeros(top, q_size), "gate_up_out": torch.zeros(top, 2 * cfg.intermediate_size),
            "act": torch.zeros(top, cfg.intermediate_size)}
        self._buffers = buffers  # the programs hold raw pointers into these: they live as long as self
        self.requests = torch.arange(top, dtype=torch.int32)
        self.logits = torch.zeros(top, cfg.vocab_size)
        decoder_layers = cast("Iterable[DecoderLayer]", model.layers)
        first = cast("DecoderLayer", model.layers[0])
        lm_head = model.embed.weight if model.lm_head is None else model.lm_head.weight
        layers: list[dict[str, torch.Tensor]] = [
            {"attn_norm": layer.attn_norm.weight, "qkv": layer.qkv.weight, "o_proj": layer.o_proj.weight,
             "mlp_norm": layer.mlp_norm.weight, "gate_up": layer.mlp.gate_up.weight, "down": layer.mlp.down.weight}
            for layer in decoder_layers]
        self.programs = {size: DecodeProgram(
            tokens=size, layers=layers, k_caches=[k for k, _ in kv_layers], v_caches=[v for _, v in kv_layers],
            heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, eps=first.attn_norm.eps,
            scale=first.attn.scale, embed=model.embed.weight, final_norm=model.final_norm.weight,
            final_eps=model.final_norm.eps, lm_head=lm_head, input_ids=self.input_ids, logits=self.logits,
            positions=self.positions, slots=self.slot_mapping,
            block_tables=self.block_tables, query_start_loc=self.query_start_loc, seq_lens=self.seq_lens,
            requests=self.requests, cos_sin=model.rope.cos_sin(), x=self.x, **buffers) for size in self.sizes}
        self._last: DecodeProgram | None = None

    @staticmethod
    def applies_to(model: torch.nn.Module, dtype: torch.dtype, device: torch.device, backend: object) -> bool:
        """Whether an engine with this model, dtype, device and attention backend can use decode programs."""
        return (device.type == "cpu" and dtype == torch.float32 and getattr(backend, "name", "") == "torch"
                and getattr(backend, "fused_ops", None) is not None and hasattr(model, "layers")
                and decode_program_available())

    def _forward(self, size: int) -> torch.Tensor:
        """Logits [size, vocab] (a view of the static buffer, rewritten by the next step)."""
        self.replay(self.programs[size])
        return self.logits[:size]

    def logits_of(self, input_ids: torch.Tensor, ctx: ForwardContext, logits_rows: torch.Tensor) -> torch.Tensor:
        logits = self.run(input_ids, ctx)  # the program's output is the logits themselves
        return logits if logits_rows.shape[0] == logits.shape[0] else logits[logits_rows]

    def replay(self, program: DecodeProgram) -> None:
        """Run one program (the op timer wraps this and then reads op_records)."""
        self._last = program
        program.run()

    def op_records(self) -> list[tuple[str, int, int, int]]:
        """The last program's ops as the op timer's records: (op, layer, start ns, end ns), perf_counter_ns."""
        last = self._last
        assert last is not None, "op_records() follows a replay()"
        return [(PROGRAM_OPS[i], layer, start, end) for i, layer, start, end in last.op_times()]
