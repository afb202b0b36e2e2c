"""The analytic cost model: FLOPs and bytes moved per operator of one forward step (pure python).

One implementation, used by the engine for its per-kernel events and by
`kvscope roofline` for its table. A step is a flat batch: request i brings
query_lens[i] new tokens and has seq_lens[i] tokens of context including them.

Counting rules (so a hand count can check them):
- FLOPs: 2 per multiply-add of every matmul (projections, attention scores and
  values, LM head); RMSNorm 4 per element; RoPE 3 per rotated element; no FLOPs
  for copies (embedding gather, KV write). Softmax and SwiGLU elementwise work are
  not counted.
- Attention is causal: the query at position p sees min(p + 1, window) keys.
- Bytes: weights read once per step (weight_bytes per parameter; norm weights and
  RoPE tables at act_bytes), K/V read once per request (flash-attention style:
  the tokens its queries can see), K/V written for the new tokens, and each
  operator's activations in and out (act_bytes per element).
- MLA (DeepSeek) runs in the absorbed form: attention over the shared latent,
  W_UK folded into the query side ("qkv"), W_UV into "o_proj".
- MoE: every token runs experts_per_token routed + the shared experts; the
  weights read are those of the experts the step's tokens are expected to touch
  under uniform routing, E * (1 - (1 - k/E)^T).
- lm_head runs on one row per request (the last token's logits are sampled).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from kvscope.config.model_config import ModelConfig

LAYER_OPS = ("attn_norm", "qkv", "rope", "kv_write", "attention", "o_proj", "mlp_norm", "mlp")
MODEL_OPS = ("embed", "final_norm", "lm_head")
STEP_OPS = ("embed",) + LAYER_OPS + ("final_norm", "lm_head")


class OpCost(NamedTuple):
    """FLOPs and bytes moved by one operator (a tuple: the engine builds a dozen a step)."""

    flops: int
    bytes: int

    # elementwise, not tuple concatenation: the override of tuple's + is deliberate
    def __add__(self, other: OpCost) -> OpCost:  # type: ignore[override]
        return OpCost(self.flops + other.flops, self.bytes + other.bytes)

    def scaled(self, n: int) -> OpCost:
        return OpCost(self.flops * n, self.bytes * n)

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else 0.0


def _cost(flops: float, nbytes: float) -> OpCost:
    return OpCost(round(flops), round(nbytes))  # round() of a float or an int is an int


def roof_time(cost: OpCost, peak_flops: float, bandwidth: float) -> float:
    """Seconds an op takes at a device's roofs: its FLOPs at peak compute or its bytes at peak bandwidth,
    whichever is slower (the roofline's time; `kvscope roofline` and the simulator both use this)."""
    return max(cost.flops / peak_flops, cost.bytes / bandwidth)


def causal_keys(query_len: int, seq_len: int, window: int = 0) -> int:
    """Keys summed over the query tokens: query at position p sees min(p + 1, window) keys (window 0 = all)."""
    lo, hi = seq_len - query_len + 1, seq_len  # each query's p + 1
    if query_len <= 0:
        return 0
    if window <= 0 or window >= hi:
        return (lo + hi) * query_len // 2
    if window < lo:
        return window * query_len
    return (lo + window) * (window - lo + 1) // 2 + window * (hi - window)


def kv_tokens_read(query_len: int, seq_len: int, window: int = 0) -> int:
    """Cached tokens one request's queries can see (each read once)."""
    if query_len <= 0:
        return 0
    return seq_len if window <= 0 else min(seq_len, query_len + window - 1)


def _check(query_lens: Sequence[int], seq_lens: Sequence[int]) -> None:
    if len(query_lens) != len(seq_lens):
        raise ValueError(f"query_lens ({len(query_lens)}) and seq_lens ({len(seq_lens)}) differ in length")
    for q, s in zip(query_lens, seq_lens):
        if q < 0 or s < q:
            raise ValueError(f"need 0 <= query_len <= seq_len, got query_len={q} seq_len={s}")


def _norm(tokens: int, hidden: int, act_bytes: int) -> OpCost:
    return _cost(4 * tokens * hidden, 2 * tokens * hidden * act_bytes + hidden * act_bytes)


def _expected_experts(shape: ModelConfig, tokens: int) -> float:
    e, k = shape.num_experts, shape.experts_per_token
    if tokens <= 0 or e <= 0:
        return 0.0
    return e * (1.0 - (1.0 - min(k, e) / e) ** tokens)


def _mlp(shape: ModelConfig, layer: int, tokens: int, weight_bytes: float, act_bytes: int) -> OpCost:
    h = shape.hidden_size
    act = 2 * tokens * h * act_bytes
    if not shape.is_moe_layer(layer):
        i = shape.intermediate_size
        return _cost(6 * tokens * h * i, 3 * h * i * weight_bytes + act)
    per_expert = 3 * h * shape.moe_intermediate_size
    experts_run = shape.experts_per_token + shape.num_shared_experts
    flops = 2 * tokens * h * shape.num_experts + 2 * tokens * per_expert * experts_run
    touched = _expected_experts(shape, tokens) + shape.num_shared_experts
    weights = (touched * per_expert + h * shape.num_experts) * weight_bytes
    return _cost(flops, weights + act)


def _mla_costs(shape: ModelConfig, tokens: int, weight_bytes: float, act_bytes: int,
               kv_bytes: float) -> tuple[OpCost, OpCost, OpCost, OpCost]:
    """qkv, rope, kv_write, o_proj of an MLA layer (the attention itself: _mla_attention)."""
    h, heads = shape.hidden_size, shape.num_heads
    rank, rope, v = shape.kv_lora_rank, shape.qk_rope_head_dim, shape.v_dim
    nope = shape.head_dim - rope
    latent = rank + rope
    if shape.q_lora_rank:
        q_params = h * shape.q_lora_rank + shape.q_lora_rank * heads * shape.head_dim
    else:
        q_params = h * heads * shape.head_dim
    qkv_params = q_params + h * latent + heads * nope * rank
    qkv_out = heads * latent + latent
    o_params = heads * rank * v + heads * v * h
    rotated = tokens * (heads + 1) * rope
    return (_cost(2 * tokens * qkv_params, qkv_params * weight_bytes + tokens * (h + qkv_out) * act_bytes),
            _cost(3 * rotated, 2 * rotated * act_bytes + tokens * rope * act_bytes),
            _cost(0, tokens * latent * (act_bytes + kv_bytes)),
            _cost(2 * tokens * o_params, o_params * weight_bytes + tokens * (heads * rank + h) * act_bytes))


def _mla_attention(shape: ModelConfig, tokens: int, keys: int, kv_read: int, act_bytes: int,
                   kv_bytes: float) -> OpCost:
    heads, rank, rope = shape.num_heads, shape.kv_lora_rank, shape.qk_rope_head_dim
    latent = rank + rope
    return _cost(2 * heads * (2 * rank + rope) * keys,
                 tokens * heads * (latent + rank) * act_bytes + kv_read * latent * kv_bytes)


def _gqa_costs(shape: ModelConfig, tokens: int, weight_bytes: float, act_bytes: int,
               kv_bytes: float) -> tuple[OpCost, OpCost, OpCost, OpCost]:
    """qkv, rope, kv_write, o_proj of a (grouped-query) attention layer (the attention itself: _gqa_attention)."""
    h, heads, kvh = shape.hidden_size, shape.num_heads, shape.num_kv_heads
    d, v = shape.head_dim, shape.v_dim
    qkv_out = heads * d + kvh * (d + v)
    bias = qkv_out if shape.attention_bias else 0
    rotated = tokens * (heads + kvh) * d
    return (_cost(2 * tokens * h * qkv_out + tokens * bias,
                  (h * qkv_out + bias) * weight_bytes + tokens * (h + qkv_out) * act_bytes),
            _cost(3 * rotated, 2 * rotated * act_bytes + tokens * d * act_bytes),
            _cost(0, tokens * kvh * (d + v) * (act_bytes + kv_bytes)),
            _cost(2 * tokens * heads * v * h, heads * v * h * weight_bytes + tokens * (heads * v + h) * act_bytes))


def _gqa_attention(shape: ModelConfig, tokens: int, keys: int, kv_read: int, act_bytes: int,
                   kv_bytes: float) -> OpCost:
    heads, kvh, d, v = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.v_dim
    return _cost(2 * heads * (d + v) * keys, tokens * heads * (d + v) * act_bytes + kv_read * kvh * (d + v) * kv_bytes)


def layer_token_costs(shape: ModelConfig, tokens: int, *, weight_bytes: float, act_bytes: int, kv_bytes: float,
                      layer: int = 0) -> dict[str, OpCost]:
    """Costs of a layer's ops that depend only on the step's token count: every op of LAYER_OPS but the
    attention, whose cost depends on each request's context too (attention_cost)."""
    build = _mla_costs if shape.is_mla else _gqa_costs
    qkv, rope, kv_write, o_proj = build(shape, tokens, weight_bytes, act_bytes, kv_bytes)
    norm = _norm(tokens, shape.hidden_size, act_bytes)
    return {"attn_norm": norm, "qkv": qkv, "rope": rope, "kv_write": kv_write, "o_proj": o_proj, "mlp_norm": norm,
            "mlp": _mlp(shape, layer, tokens, weight_bytes, act_bytes)}


def attention_cost(shape: ModelConfig, query_lens: Sequence[int], seq_lens: Sequence[int], *, act_bytes: int,
                   kv_bytes: float, layer: int = 0) -> OpCost:
    """The attention op of one layer for the step: the causal keys each query sees and the K/V read once."""
    window = shape.sliding_window if shape.is_local(layer) else 0
    keys = sum([causal_keys(q, s, window) for q, s in zip(query_lens, seq_lens)])
    kv_read = sum([kv_tokens_read(q, s, window) for q, s in zip(query_lens, seq_lens)])
    build = _mla_attention if shape.is_mla else _gqa_attention
    return build(shape, sum(query_lens), keys, kv_read, act_bytes, kv_bytes)


def layer_op_costs(shape: ModelConfig, query_lens: Sequence[int], seq_lens: Sequence[int], *,
                   weight_bytes: float, act_bytes: int, kv_bytes: float, layer: int = 0) -> dict[str, OpCost]:
    """Costs of one decoder layer's ops (LAYER_OPS) for the step; `layer` matters for sliding-window and MoE models."""
    _check(query_lens, seq_lens)
    costs = layer_token_costs(shape, sum(query_lens), weight_bytes=weight_bytes, act_bytes=act_bytes,
                              kv_bytes=kv_bytes, layer=layer)
    costs["attention"] = attention_cost(shape, query_lens, seq_lens, act_bytes=act_bytes, kv_bytes=kv_bytes,
                                        layer=layer)
    return {op: costs[op] for op in LAYER_OPS}


def model_token_costs(shape: ModelConfig, tokens: int, rows: int, *, weight_bytes: float,
                      act_bytes: int) -> dict[str, OpCost]:
    """Costs of the ops outside the layers (MODEL_OPS) for `tokens` tokens, `rows` of them sampled."""
    h, vocab = shape.hidden_size, shape.vocab_size
    return {
        "embed": _cost(0, tokens * h * weight_bytes + tokens * h * act_bytes),
        "final_norm": _norm(tokens, h, act_bytes),
        "lm_head": _cost(2 * rows * h * vocab, h * vocab * weight_bytes + rows * (h + vocab) * act_bytes),
    }


def model_op_costs(shape: ModelConfig, query_lens: Sequence[int], seq_lens: Sequence[int], *,
                   weight_bytes: float, act_bytes: int, kv_bytes: float) -> dict[str, OpCost]:
    """Costs of the ops outside the layers (MODEL_OPS): embedding gather, final norm, LM head on one row per request."""
    _check(query_lens, seq_lens)
    return model_token_costs(shape, sum(query_lens), sum(1 for q in query_lens if q > 0),
                             weight_bytes=weight_bytes, act_bytes=act_bytes)


def step_op_costs(shape: ModelConfig, query_lens: Sequence[int], seq_lens: Sequence[int], *,
                  weight_bytes: float, act_bytes: int, kv_bytes: float) -> dict[str, OpCost]:
    """Whole-step costs per op (STEP_OPS order), layer ops summed over every layer."""
    kinds: dict[tuple[bool, bool], list[int]] = {}
    for layer in range(shape.num_layers):
        kinds.setdefault((shape.is_local(layer), shape.is_moe_layer(layer)), []).append(layer)
    totals = {op: OpCost(0, 0) for op in LAYER_OPS}
    for layers in kinds.values():
        per_layer = layer_op_costs(shape, query_lens, seq_lens, weight_bytes=weight_bytes, act_bytes=act_bytes,
                                   kv_bytes=kv_bytes, layer=layers[0])
        for op, cost in per_layer.items():
            totals[op] = totals[op] + cost.scaled(len(layers))
    outer = model_op_costs(shape, query_lens, seq_lens, weight_bytes=weight_bytes, act_bytes=act_bytes,
                           kv_bytes=kv_bytes)
    return {op: totals[op] if op in totals else outer[op] for op in STEP_OPS}


def step_bytes_written(shape: ModelConfig, tokens: int, rows: int, *, act_bytes: int, kv_bytes: float) -> int:
    """The part of a step's bytes (step_op_costs) that is written, not read: every op's output activations and
    the K/V written for the new tokens, by the counting rules above (the rest of an op's bytes are its reads)."""
    h, heads = shape.hidden_size, shape.num_heads
    if shape.is_mla:
        latent = shape.kv_lora_rank + shape.qk_rope_head_dim
        qkv_out, rotated = heads * latent + latent, (heads + 1) * shape.qk_rope_head_dim
        kv_out, attn_out = latent, heads * shape.kv_lora_rank
    else:
        kvh, d, v = shape.num_kv_heads, shape.head_dim, shape.v_dim
        qkv_out, rotated, kv_out, attn_out = heads * d + kvh * (d + v), (heads + kvh) * d, kvh * (d + v), heads * v
    # per layer: attn_norm, qkv, rope, attention, o_proj, mlp_norm, mlp outputs; kv_write's K/V into the cache
    per_layer = tokens * ((4 * h + qkv_out + rotated + attn_out) * act_bytes + kv_out * kv_bytes)
    outer = 2 * tokens * h * act_bytes + rows * shape.vocab_size * act_bytes  # embed, final_norm; lm_head's logits
    return round(shape.num_layers * per_layer + outer)
