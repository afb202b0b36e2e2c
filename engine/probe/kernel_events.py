"""Kernel events: the op timer's records joined with the analytic cost model (one implementation:
kvscope.costmodel.roofline), so every KernelEvent carries its FLOPs and bytes.

A replayed CUDA graph is one record (`cuda_graph`, its CUDA-event time): it becomes the forward's ops
(embedding, each layer's, final norm) laid end to end over that time, each given a share in proportion to
the bytes the cost model says it moves (a decode step is bandwidth-bound), with the backend
"cuda graph, split estimated" so no one mistakes them for measured launches."""

from __future__ import annotations

import torch

from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.roofline import (
    LAYER_OPS,
    STEP_OPS,
    OpCost,
    attention_cost,
    layer_token_costs,
    model_token_costs,
)
from kvscope.engine.core.scheduler import ScheduledRequest
from kvscope.engine.probe.op_timer import GRAPH_OP
from kvscope.events.records import KernelEvent

GRAPH_BACKEND = "cuda graph, split estimated"  # the backend label of the ops a graph's time is split over


class KernelEventBuilder:
    """Builds a step's KernelEvents from (op, layer, start, end) records."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, backend: str, fused_norm_rope: bool = False) -> None:
        self.config = config  # the cost model reads the engine's own config
        elt = torch.tensor([], dtype=dtype).element_size()
        self.elt = elt
        backend_ops = {"attention", "kv_write"} | ({"attn_norm", "mlp_norm", "final_norm", "rope"} if fused_norm_rope
                                                    else set())
        self.backend_of = {op: backend if op in backend_ops else "torch" for op in (*STEP_OPS, "sample")}
        self.vocab = config.vocab_size
        self._token_costs: dict[tuple[int, int, int], dict[str, OpCost]] = {}

    def costs(self, scheduled: list[ScheduledRequest], num_padding_tokens: int = 0) -> dict[str, OpCost]:
        """Each op's cost for the step. Only the attention depends on the requests' contexts; the other ops'
        costs depend on the token and sampled-row counts alone and are kept per (tokens, pads, rows)."""
        query_lens = [s.num_tokens for s in scheduled]
        seq_lens = [s.request.num_computed_tokens for s in scheduled]  # already advanced past this step
        # LM-head rows: one per request, 1 + its drafts for a request verifying drafts
        rows = sum(s.num_tokens if s.num_draft_slots else 1 for s in scheduled if s.num_tokens)
        tokens, elt = sum(query_lens), self.elt
        key = (tokens, num_padding_tokens, rows)
        fixed = self._token_costs.get(key)
        if fixed is None:
            if len(self._token_costs) >= 4096:
                self._token_costs.clear()
            # pad tokens pass through the layers' matmuls (one-token requests with no context), not the LM head
            fixed = layer_token_costs(self.config, tokens + num_padding_tokens, weight_bytes=elt, act_bytes=elt,
                                      kv_bytes=elt)
            fixed.update(model_token_costs(self.config, tokens, rows, weight_bytes=elt, act_bytes=elt))
            self._token_costs[key] = fixed
        costs = dict(fixed)
        pads = [1] * num_padding_tokens
        costs["attention"] = attention_cost(self.config, query_lens + pads, seq_lens + pads, act_bytes=elt,
                                            kv_bytes=elt)
        return costs

    def events(self, step: int, records: list[tuple], scheduled: list[ScheduledRequest],
               num_sampled: int, num_padding_tokens: int = 0, num_tokens: int = 0) -> list[KernelEvent]:
        """One KernelEvent per record, with the op's FLOPs and bytes for this step's batch."""
        costs = self.costs(scheduled, num_padding_tokens)
        costs["sample"] = OpCost(num_sampled * self.vocab * 2, num_sampled * self.vocab * 4)
        shapes = f"T={num_tokens + num_padding_tokens} B={len(scheduled)}"
        backend_of = self.backend_of
        events = []
        for record in records:
            op, layer, start, end = record[:4]
            if op == GRAPH_OP:
                events.extend(self.graph_split(step, start, end, costs, shapes))
            else:
                backend = record[4] if len(record) > 4 else backend_of[op]  # a CPU decode program names itself
                events.append(KernelEvent(end, step, op, layer, backend, start, end, shapes, *costs[op]))
        return events

    def graph_split(self, step: int, start: int, end: int, costs: dict[str, OpCost],
                    shapes: str) -> list[KernelEvent]:
        """A replayed graph's [start, end) over the forward's ops, in call order, shares by modelled bytes."""
        ops = [("embed", -1)] + [(op, i) for i in range(self.config.num_layers) for op in LAYER_OPS]
        ops.append(("final_norm", -1))
        weights = [max(costs[op].bytes, 1) for op, _ in ops]
        total, span = sum(weights), end - start
        events, done, t = [], 0, start
        for (op, layer), w in zip(ops, weights):
            done += w
            t_end = start + span * done // total
            events.append(KernelEvent(t_end, step, op, layer, GRAPH_BACKEND, t, t_end, shapes, *costs[op]))
            t = t_end
        return events
