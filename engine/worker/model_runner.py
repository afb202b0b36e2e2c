"""The model runner: turns a SchedulerOutput into one flat, unpadded token batch, runs the model, samples.

For each scheduled request it takes the next `num_tokens` tokens after those
already computed, their positions, their cache slots (block_table[pos //
block_size] * block_size + pos % block_size), and its block table. Requests
whose computed tokens reach the end of what they hold get one logits row
(their last token's) and are sampled. A request with k draft tokens computes its
newest token and the drafts (1 + k tokens), gets 1 + k logits rows and is verified
(kvscope.engine.worker.rejection_sampler): its result is the accepted drafts and one more token.

The runner binds the KV pools and the attention backend into the model once, when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from kvscope.engine.core.request import Request
from kvscope.engine.core.scheduler import SchedulerOutput
from kvscope.engine.model.attention import AttentionBackend, AttentionMetadata
from kvscope.engine.model.forward_context import ForwardContext
from kvscope.engine.worker.cuda_graphs import DecodeGraphs
from kvscope.engine.worker.kv_cache import KVCache
from kvscope.engine.worker.rejection_sampler import verify
from kvscope.engine.worker.sampler import sample

if TYPE_CHECKING:
    from kvscope.engine.model.llama import DecoderLayer, LlamaModel


@dataclass(slots=True)
class PreparedBatch:
    input_ids: torch.Tensor
    ctx: ForwardContext
    logits_rows: torch.Tensor          # flat row index of each sampled request's last token (and its drafts)
    sampled: list[Request]             # requests that get a new token this step
    num_verified: int = 0              # sampled requests with drafts (1 + k rows each, in order)


class ModelRunner:
    def __init__(self, model: LlamaModel, kv_cache: KVCache, backend: AttentionBackend,
                 device: torch.device) -> None:
        self.model = model
        self.kv_layers = kv_cache.layers()
        self.backend = backend
        self.device = device
        self.block_size = kv_cache.block_size
        self.graphs: DecodeGraphs | None = None  # decode steps replayed: CUDA graphs or CPU decode programs
        self.model.bind_kv_cache(self.kv_layers, backend)

    def prepare(self, out: SchedulerOutput) -> PreparedBatch:
        """The flat batch; `out.num_padding_tokens` pad tokens (id 0, slot -1: never stored, never attended to,
        outside every request's query range) follow the real ones and go through every matmul."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        logits_rows: list[int] = []
        sampled: list[Request] = []
        tables: list[list[int]] = []
        num_verified = 0
        for s in out.scheduled:
            req, n = s.request, s.num_tokens
            start = req.num_computed_tokens
            end = start + n
            table = req.block_table
            drafts = req.spec_token_ids
            input_ids.extend((req.token_ids + drafts if drafts else req.token_ids)[start:end])
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(n)
            seq_lens.append(end)
            tables.append(table)
            if drafts:
                logits_rows.extend(range(len(input_ids) - 1 - len(drafts), len(input_ids)))
                sampled.append(req)
                num_verified += 1
            elif end == req.num_tokens:
                logits_rows.append(len(input_ids) - 1)
                sampled.append(req)
        pad = out.num_padding_tokens
        if pad:
            input_ids.extend([0] * pad)
            positions.extend([0] * pad)
            slots.extend([-1] * pad)
        return PreparedBatch(self._tensor(input_ids, torch.int64),
                             self.context(positions, slots, query_lens, seq_lens, tables),
                             self._tensor(logits_rows, torch.int64), sampled, num_verified)

    def context(self, positions: list[int], slots: list[int], query_lens: list[int], seq_lens: list[int],
                tables: list[list[int]]) -> ForwardContext:
        """The forward context of a flat batch: per token its position and slot, per request its query and
        context lengths and block table."""
        width = max(len(t) for t in tables)
        qsl = [0]
        for n in query_lens:
            qsl.append(qsl[-1] + n)
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots, torch.int64),
            block_tables=self._tensor([t + [0] * (width - len(t)) for t in tables], torch.int32),
            query_start_loc=self._tensor(qsl, torch.int32),
            seq_lens=self._tensor(seq_lens, torch.int32),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            block_tables_host=tables,
            all_slots_valid=min(slots, default=0) >= 0,
        )
        return ForwardContext(self._tensor(positions, torch.int64), meta)

    def ensure_bound(self) -> None:
        """Bind this runner's KV pools into the model again if another runner on the same model (another engine,
        a draft model's runner) bound its own since."""
        if cast("DecoderLayer", self.model.layers[0]).attn.k_cache is not self.kv_layers[0][0]:
            self.model.bind_kv_cache(self.kv_layers, self.backend)

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def forward(self, batch: PreparedBatch) -> torch.Tensor | None:
        """Float32 logits [len(batch.sampled), vocab], or None when no request samples this step."""
        self.ensure_bound()
        graphs = self.graphs
        if graphs is not None and graphs.applies(batch.input_ids, batch.ctx, batch.num_verified):
            if batch.sampled:
                return graphs.logits_of(batch.input_ids, batch.ctx, batch.logits_rows)
            graphs.run(batch.input_ids, batch.ctx)
            return None
        hidden = self.model(batch.input_ids, batch.ctx)
        if not batch.sampled:
            return None
        return self.model.compute_logits(hidden[batch.logits_rows])

    def sample(self, batch: PreparedBatch, logits: torch.Tensor | None) -> list[list[int] | None]:
        """Each sampled request's new tokens (one, or its accepted drafts and one more) under its own sampling
        parameters and generator; None for a request whose sampling failed."""
        return [] if logits is None else self.sample_rows(logits, batch.sampled, batch.num_verified)

    def sample_rows(self, logits: torch.Tensor, requests: list[Request],
                    num_verified: int = 0) -> list[list[int] | None]:
        """The sampler proper (one op on the timeline): row i of logits belongs to requests[i], or, when some
        requests have drafts, each request has 1 + len(spec_token_ids) consecutive rows."""
        if not num_verified:
            return [None if t is None else [t]
                    for t in sample(logits, [r.params for r in requests], [r.generator for r in requests])]
        runs: list[list[int] | None] = []
        row = 0
        for r in requests:
            n = 1 + len(r.spec_token_ids)
            try:
                runs.append(verify(logits[row:row + n], r.spec_token_ids, r.params, r.draft_probs, r.generator))
            except Exception:  # one request's bad parameters must not stop the others (as sample() does)
                runs.append(None)
            row += n
        return runs
