"""Kernel events: the op timer's records joined with the analytic cost model (one implementation:
kvscope.inspector.roofline), so every KernelEvent carries its FLOPs and bytes."""

from __future__ import annotations

from typing import Iterator

import torch

from kvscope.engine.model_config import ModelConfig
from kvscope.engine.scheduler import ScheduledRequest
from kvscope.inspector.events import KernelEvent
from kvscope.inspector.model_shapes import ModelShape
from kvscope.inspector.roofline import OpCost, layer_op_costs, model_op_costs


def shape_of(config: ModelConfig) -> ModelShape:
    """The analytic model's view of an engine model config."""
    return ModelShape(
        name=config.name, num_layers=config.num_layers, hidden_size=config.hidden_size,
        num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
        intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
        tie_embeddings=config.tie_embeddings, max_context=config.max_position_embeddings,
        rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
    )


class KernelEventBuilder:
    """Builds a step's KernelEvents from (op, layer, start, end) records."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, backend: str, fused_norm_rope: bool = False) -> None:
        self.shape = shape_of(config)
        self.elt = torch.tensor([], dtype=dtype).element_size()
        self.backend = backend
        self.backend_ops = {"attention", "kv_write"} | (
            {"attn_norm", "mlp_norm", "final_norm", "rope"} if fused_norm_rope else set())
        self.vocab = config.vocab_size
        self.hidden = config.hidden_size

    def costs(self, scheduled: list[ScheduledRequest], num_padding_tokens: int = 0) -> dict[str, OpCost]:
        query_lens = [s.num_tokens for s in scheduled]
        seq_lens = [s.request.num_computed_tokens for s in scheduled]  # already advanced past this step
        kw = dict(weight_bytes=self.elt, act_bytes=self.elt, kv_bytes=self.elt)
        # pad tokens pass through the layers' matmuls (counted as one-token requests with no context)
        pads = [1] * num_padding_tokens
        costs = dict(layer_op_costs(self.shape, query_lens + pads, seq_lens + pads, **kw))
        costs.update(model_op_costs(self.shape, query_lens, seq_lens, **kw))
        return costs

    def events(self, step: int, records: list[tuple[str, int, int, int]], scheduled: list[ScheduledRequest],
               num_sampled: int, num_padding_tokens: int = 0) -> Iterator[KernelEvent]:
        costs = self.costs(scheduled, num_padding_tokens)
        num_tokens = sum(s.num_tokens for s in scheduled) + num_padding_tokens
        sample_cost = OpCost(flops=num_sampled * self.vocab * 2, bytes=num_sampled * self.vocab * 4)
        shapes = f"T={num_tokens} B={len(scheduled)}"
        backend, backend_ops = self.backend, self.backend_ops
        for op, layer, start, end in records:
            c = sample_cost if op == "sample" else costs.get(op)
            yield KernelEvent(end, step, op, layer, backend if op in backend_ops else "torch",
                              start, end, shapes, c.flops if c else 0, c.bytes if c else 0)
