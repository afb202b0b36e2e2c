"""The model runner: turns a SchedulerOutput into one flat, unpadded token batch and runs the model.

For each scheduled request it takes the next `num_tokens` tokens after those
already computed, their positions, their cache slots (block_table[pos //
block_size] * block_size + pos % block_size), and its block table. Requests
whose computed tokens reach the end of what they hold get one logits row
(their last token's) and are sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvscope.engine.attention import AttentionBackend, AttentionMetadata
from kvscope.engine.kv_cache import KVCache
from kvscope.engine.op_timer import OpTimer
from kvscope.engine.request import Request
from kvscope.engine.scheduler import ScheduledRequest


@dataclass(slots=True)
class PreparedBatch:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_rows: torch.Tensor          # flat row index of each sampled request's last token
    sampled: list[Request]             # requests that get a new token this step


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, backend: AttentionBackend,
                 device: torch.device, scale: float) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.kv_layers = kv_cache.layers()
        self.backend = backend
        self.device = device
        self.block_size = kv_cache.block_size
        self.scale = scale

    def prepare(self, scheduled: list[ScheduledRequest], num_padding_tokens: int = 0) -> PreparedBatch:
        """The flat batch; `num_padding_tokens` pad tokens (id 0, slot -1: never stored, never attended to,
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
        for s in scheduled:
            req, n = s.request, s.num_tokens
            start = req.num_computed_tokens
            end = start + n
            table = req.block_table
            input_ids.extend(req.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(n)
            seq_lens.append(end)
            tables.append(table)
            if end == req.num_tokens:
                logits_rows.append(len(input_ids) - 1)
                sampled.append(req)
        if num_padding_tokens:
            input_ids.extend([0] * num_padding_tokens)
            positions.extend([0] * num_padding_tokens)
            slots.extend([-1] * num_padding_tokens)
        width = max(len(t) for t in tables)
        padded = [t + [0] * (width - len(t)) for t in tables]
        qsl = [0]
        for n in query_lens:
            qsl.append(qsl[-1] + n)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64).to(dev, non_blocking=True),
            block_tables=torch.tensor(padded, dtype=torch.int32).to(dev, non_blocking=True),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32).to(dev, non_blocking=True),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(dev, non_blocking=True),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
        )
        return PreparedBatch(
            input_ids=torch.tensor(input_ids, dtype=torch.int64).to(dev, non_blocking=True),
            positions=torch.tensor(positions, dtype=torch.int64).to(dev, non_blocking=True),
            meta=meta,
            logits_rows=torch.tensor(logits_rows, dtype=torch.int64).to(dev, non_blocking=True),
            sampled=sampled,
        )

    @torch.inference_mode()
    def forward(self, batch: PreparedBatch, timer: OpTimer | None) -> torch.Tensor | None:
        """Float32 logits [len(batch.sampled), vocab], or None when no request samples this step."""
        hidden = self.model(batch.input_ids, batch.positions, self.kv_layers, batch.meta, self.backend, timer)
        if not batch.sampled:
            return None
        return self.model.compute_logits(hidden[batch.logits_rows], timer)
