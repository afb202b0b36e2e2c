"""The per-step context every layer reads: token positions and the attention metadata.

The model runner builds one per step and passes it down the forward (nano-vllm keeps its
Context in a global; ours is an argument, so two engines in one process never share one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvscope.engine.model.attention import AttentionMetadata


@dataclass(slots=True)
class ForwardContext:
    positions: torch.Tensor    # [T] int64, each token's position in its request
    attn: AttentionMetadata    # slots, block tables, query/context lengths
