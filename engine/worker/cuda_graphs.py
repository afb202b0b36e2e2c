"""CUDA graphs for decode steps: the forward pass captured once per batch size of a ladder, then replayed.

A decode step of a small model on a GPU is mostly launch overhead: hundreds of small kernels, each a few
microseconds of Python and driver work. Captured as a CUDA graph, the whole forward pass (embedding, every
layer, the final norm) is one launch. What the graph reads lives in static buffers, sized for the largest
batch: token ids, positions, KV slots, block tables, query starts and context lengths.

- Capture (`DecodeGraphs(..., capture=True)`, at engine start): for every size of the ladder up to the
  largest decode batch the scheduler can form, two warm-up passes (Triton compiles) and one captured pass,
  largest first, all in one memory pool. The attention metadata is frozen at capture: one query token per
  request and the model's maximum context (the Triton decode kernel bounds every loop by the context
  lengths it reads at replay, so shorter contexts only leave some splits empty).
- Replay (`run`): a step that is decode only (one token per request, no drafts, no padding tokens) and no
  larger than the ladder's top copies its inputs into the buffers, pads up to the nearest captured size
  with dummy requests (token 0, position 0, KV slot -1: never stored; context 1 in block 0; their rows are
  computed and dropped) and replays. Anything else runs eagerly.
- Kernel events: the op timer cannot see inside a graph. It times `replay` as one op, `cuda_graph`, with
  CUDA events; kvscope.engine.probe.kernel_events splits that time over the forward's ops by the cost model and
  labels them as estimated.
- `capture=False` runs the same buffers and padding eagerly (the tests check padding and replay
  bookkeeping on a CPU this way, with the Triton kernels under the interpreter); only `capture=True`
  records and replays graphs, and needs CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kvscope.engine.model.attention import AttentionMetadata
from kvscope.engine.model.forward_context import ForwardContext

if TYPE_CHECKING:
    from kvscope.engine.model.llama import LlamaModel

CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """The ladder up to the largest decode batch (that batch itself is the top rung; at most 256)."""
    top = min(max_num_seqs, CAPTURE_SIZES[-1])
    return [s for s in CAPTURE_SIZES if s < top] + [top]


@dataclass(slots=True)
class _Captured:
    graph: Any                # torch.cuda.CUDAGraph
    hidden: torch.Tensor      # the graph's output: final-normed hidden states [size, hidden]


class DecodeGraphs:
    """Decode-step forward passes by batch size: captured CUDA graphs, or (capture=False) eager passes over
    the same static, padded buffers."""

    def __init__(self, model: LlamaModel, device: torch.device, max_num_seqs: int, max_model_len: int,
                 block_size: int, capture: bool = True) -> None:
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device.type}")
        self.model = model
        self.max_model_len = max_model_len
        self.sizes = capture_sizes(max_num_seqs)
        top, width = self.sizes[-1], -(-max_model_len // block_size)
        self.input_ids = torch.zeros(top, dtype=torch.int64, device=device)
        self.positions = torch.zeros(top, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((top,), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(top, width, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(top + 1, dtype=torch.int32, device=device)  # one token each
        self.seq_lens = torch.ones(top, dtype=torch.int32, device=device)
        self.graphs: dict[int, _Captured] = {}
        self.replays = 0  # steps run through run() (graphs or their eager stand-in)
        if capture:
            self._capture_all()

    def padded_size(self, num_requests: int) -> int | None:
        """The smallest rung that holds the batch, or None (larger than the ladder: run eagerly)."""
        return next((s for s in self.sizes if s >= num_requests), None)

    def applies(self, input_ids: torch.Tensor, ctx: ForwardContext, num_verified: int) -> bool:
        """Whether this step can replay: decode only (one token per request), no drafts, no padding tokens,
        and no more requests than the ladder's top."""
        meta = ctx.attn
        n = input_ids.shape[0]
        return (meta.max_query_len == 1 and num_verified == 0 and len(meta.seq_lens_host) == n
                and self.padded_size(n) is not None)

    def run(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The forward's output for the n requests of a step `applies` accepted: final-normed hidden states
        [n, hidden] (a CPU decode program's: logits [n, vocab])."""
        n = input_ids.shape[0]
        size = self.padded_size(n)
        assert size is not None, "run() takes only a step that applies() accepted"
        meta = ctx.attn
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(ctx.positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.block_tables[:n, :meta.block_tables.shape[1]].copy_(meta.block_tables)
        self.seq_lens[:n].copy_(meta.seq_lens)
        if size > n:  # dummy requests: never stored, context of one slot in block 0
            self.input_ids[n:size].zero_()
            self.positions[n:size].zero_()
            self.slot_mapping[n:size].fill_(-1)
            self.block_tables[n:size].zero_()
            self.seq_lens[n:size].fill_(1)
        self.replays += 1
        return self._forward(size)[:n]

    def logits_of(self, input_ids: torch.Tensor, ctx: ForwardContext, logits_rows: torch.Tensor) -> torch.Tensor:
        """Float32 logits [len(logits_rows), vocab] of the rows `logits_rows` (increasing) of a step `applies`
        accepted."""
        return self.model.compute_logits(self.run(input_ids, ctx)[logits_rows])

    def _forward(self, size: int) -> torch.Tensor:
        """Hidden states [size, hidden] over the filled buffers: the captured graph, or (capture=False) eagerly."""
        captured = self.graphs.get(size)
        if captured is None:
            return self.model(self.input_ids[:size], self._context(size))
        self.replay(captured)
        return captured.hidden

    def replay(self, captured: Any) -> None:
        """Launch one captured forward pass (the op timer times this call as `cuda_graph`)."""
        captured.graph.replay()

    def _context(self, size: int) -> ForwardContext:
        """The frozen metadata of a `size`-request decode step over the static buffers."""
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], block_tables=self.block_tables[:size],
            query_start_loc=self.query_start_loc[:size + 1], seq_lens=self.seq_lens[:size],
            query_lens_host=[1] * size, seq_lens_host=[self.max_model_len] * size,
            max_query_len=1, max_seq_len=self.max_model_len,
        )
        return ForwardContext(self.positions[:size], meta)

    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):  # the largest first: the shared pool is sized once
            ids, ctx = self.input_ids[:size], self._context(size)
            for _ in range(2):
                self.model(ids, ctx)  # warm-up: Triton compiles and autotunes outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self.model(ids, ctx)
            self.graphs[size] = _Captured(graph, hidden)
        torch.cuda.synchronize()
