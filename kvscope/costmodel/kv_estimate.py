"""The analytic KV-memory estimator behind `kvscope kv`: bytes per token, per request, per batch, and what fits.

Pure python, no torch. The numbers:
- bytes per token: every layer's cached values for one token (K and V of each KV
  head; for MLA the shared latent plus the rope key) times the KV dtype's size.
- per request at context C: each layer stores min(C, window) tokens (local layers
  stop growing past their window); the paged figure rounds each layer's tokens up
  to whole blocks.
- the KV budget: device memory (x GPUs) x utilisation - weights; blocks = budget / block bytes
  (a block holds block_size tokens of every layer, as in the engine's pools). A shape whose
  parameter count is unknown (a config.json without intermediate_size or vocab_size) has no
  weights' size, so the budget and what fits in it are None; the KV figures stand.
- fragmentation: empty slots in the last block at exactly C, and the expected waste
  for lengths spread evenly (block_size - 1) / 2 slots per request.
- the contiguous baseline: every request reserves max_len tokens up front.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kvscope.config.model_config import ModelConfig, params_of
from kvscope.costmodel.devices import Device

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
DTYPE_ALIASES: dict[str, str] = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
                                 "float8": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "q8_0": "int8",
                                 "q4": "int4", "q4_0": "int4"}


class EstimateError(ValueError):
    """An argument the estimator cannot use (unknown dtype, non-positive sizes)."""


def dtype_bytes(name: str, what: str = "dtype") -> float:
    """Bytes per element of a dtype name (fp32, fp16, bf16, fp8, int8, int4 and common spellings)."""
    key = DTYPE_ALIASES.get(name.lower(), name.lower())
    if key not in DTYPE_BYTES:
        raise EstimateError(f"unknown {what} {name!r} (expected one of {', '.join(DTYPE_BYTES)})")
    return DTYPE_BYTES[key]


def canonical_dtype(name: str) -> str:
    key = DTYPE_ALIASES.get(name.lower(), name.lower())
    dtype_bytes(key)
    return key


def kv_bytes_per_token(shape: ModelConfig, kv_bytes: float) -> int:
    """Bytes one token adds to the cache across all layers (before any sliding window caps it)."""
    return int(shape.num_layers * shape.kv_elements_per_token_layer() * kv_bytes)


def mha_bytes_per_token(shape: ModelConfig, kv_bytes: float) -> int:
    """The same with one K/V head per query head (the multi-head-attention figure)."""
    return int(shape.num_layers * shape.mha_kv_elements_per_token_layer() * kv_bytes)


def kv_formula(shape: ModelConfig, kv_bytes: float) -> str:
    """The bytes-per-token formula with the model's numbers filled in."""
    total = kv_bytes_per_token(shape, kv_bytes)
    size = f"{kv_bytes:g} B"
    if shape.is_mla:
        return (f"{shape.num_layers} layers x ({shape.kv_lora_rank} latent + {shape.qk_rope_head_dim} rope) "
                f"x {size} = {total:,} B")
    if shape.v_dim != shape.head_dim:
        return (f"{shape.num_layers} layers x {shape.num_kv_heads} kv_heads x ({shape.head_dim} K + "
                f"{shape.v_dim} V) x {size} = {total:,} B")
    return (f"2 (K,V) x {shape.num_layers} layers x {shape.num_kv_heads} kv_heads x {shape.head_dim} head_dim "
            f"x {size} = {total:,} B")


def mha_formula(shape: ModelConfig, kv_bytes: float) -> str:
    total = mha_bytes_per_token(shape, kv_bytes)
    if shape.v_dim != shape.head_dim:
        return (f"{shape.num_layers} layers x {shape.num_heads} heads x ({shape.head_dim} K + {shape.v_dim} V) "
                f"x {kv_bytes:g} B = {total:,} B")
    return (f"2 (K,V) x {shape.num_layers} layers x {shape.num_heads} heads x {shape.head_dim} head_dim "
            f"x {kv_bytes:g} B = {total:,} B")


def _layer_tokens(shape: ModelConfig, layer: int, context: int) -> int:
    """Tokens layer `layer` keeps for a request at `context`."""
    return min(context, shape.sliding_window) if shape.is_local(layer) else context


def _layer_blocks(shape: ModelConfig, layer: int, context: int, block_size: int) -> int:
    """Blocks layer `layer` needs at `context`: a window ending at context-1 may straddle one extra block."""
    if context <= 0:
        return 0
    if not shape.is_local(layer) or context <= shape.sliding_window:
        return -(-context // block_size)
    first = context - shape.sliding_window
    return (context - 1) // block_size - first // block_size + 1


def request_kv_bytes(shape: ModelConfig, context: int, kv_bytes: float) -> int:
    """Bytes of K/V one request holds at `context` tokens (sliding-window layers capped at the window)."""
    per_layer = shape.kv_elements_per_token_layer() * kv_bytes
    return int(sum(_layer_tokens(shape, i, context) for i in range(shape.num_layers)) * per_layer)


def request_paged_bytes(shape: ModelConfig, context: int, kv_bytes: float, block_size: int) -> int:
    """Bytes of whole blocks one request occupies at `context` tokens."""
    per_layer = shape.kv_elements_per_token_layer() * kv_bytes
    blocks = sum(_layer_blocks(shape, i, context, block_size) for i in range(shape.num_layers))
    return int(blocks * block_size * per_layer)


@dataclass(frozen=True, slots=True)
class KVEstimate:
    """Everything `kvscope kv` prints. Byte counts are integers; fractions are 0..1. None: not known without the
    weights' size (the shape's missing_weights_fields)."""

    model: str
    attention: str
    num_layers: int
    num_local_layers: int
    sliding_window: int
    kv_dtype: str
    weights_dtype: str
    context: int
    batch: int
    block_size: int
    max_len: int
    bytes_per_token: int
    formula: str
    mha_bytes_per_token: int
    mha_formula: str
    request_bytes: int
    request_paged_bytes: int
    batch_bytes: int
    num_params: int | None
    weights_bytes: int | None
    device: str
    num_gpus: int
    device_bytes: int
    mem_util: float
    kv_budget_bytes: int | None
    block_bytes: int
    num_blocks: int | None
    blocks_per_request: float
    max_requests: int | None
    batch_fits: bool | None
    waste_slots_at_context: int
    waste_fraction_at_context: float
    expected_waste_fraction: float
    contiguous_request_bytes: int
    contiguous_max_requests: int | None
    contiguous_waste_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_kv(
    shape: ModelConfig,
    device: Device,
    *,
    context: int,
    batch: int = 1,
    kv_dtype: str = "fp16",
    weights_dtype: str = "fp16",
    block_size: int = 16,
    mem_util: float = 0.9,
    max_len: int | None = None,
    num_gpus: int = 1,
) -> KVEstimate:
    """The KV-memory picture for `batch` requests of `context` tokens each on `num_gpus` x `device`."""
    if context <= 0:
        raise EstimateError(f"--context must be a positive number of tokens, got {context}")
    if batch <= 0:
        raise EstimateError(f"--batch must be a positive number of requests, got {batch}")
    if block_size <= 0:
        raise EstimateError(f"--block-size must be a positive number of tokens, got {block_size}")
    if num_gpus <= 0:
        raise EstimateError(f"--gpus must be a positive number, got {num_gpus}")
    if not 0 < mem_util <= 1:
        raise EstimateError(f"--mem-util must be in (0, 1], got {mem_util}")
    max_len = max_len if max_len is not None else max(shape.max_position_embeddings, context)
    if max_len < context:
        raise EstimateError(f"--max-len ({max_len}) is shorter than --context ({context})")
    kv_b = dtype_bytes(kv_dtype, "--kv-dtype")
    w_b = dtype_bytes(weights_dtype, "--weights-dtype")

    per_token = kv_bytes_per_token(shape, kv_b)
    req_bytes = request_kv_bytes(shape, context, kv_b)
    req_paged = request_paged_bytes(shape, context, kv_b, block_size)
    num_params = params_of(shape)
    weights = None if num_params is None else int(num_params * w_b)
    device_bytes = device.memory_bytes * num_gpus
    usable = int(device_bytes * mem_util)
    budget = None if weights is None else max(0, usable - weights)
    block_bytes = per_token * block_size
    contiguous = request_kv_bytes(shape, max_len, kv_b)
    waste_slots = -(-context // block_size) * block_size - context
    mean_waste = (block_size - 1) / 2
    return KVEstimate(
        model=shape.name,
        attention=shape.attention_kind,
        num_layers=shape.num_layers,
        num_local_layers=shape.num_local_layers,
        sliding_window=shape.sliding_window,
        kv_dtype=canonical_dtype(kv_dtype),
        weights_dtype=canonical_dtype(weights_dtype),
        context=context,
        batch=batch,
        block_size=block_size,
        max_len=max_len,
        bytes_per_token=per_token,
        formula=kv_formula(shape, kv_b),
        mha_bytes_per_token=mha_bytes_per_token(shape, kv_b),
        mha_formula=mha_formula(shape, kv_b),
        request_bytes=req_bytes,
        request_paged_bytes=req_paged,
        batch_bytes=batch * req_paged,
        num_params=num_params,
        weights_bytes=weights,
        device=device.name,
        num_gpus=num_gpus,
        device_bytes=device_bytes,
        mem_util=mem_util,
        kv_budget_bytes=budget,
        block_bytes=block_bytes,
        num_blocks=None if budget is None else budget // block_bytes,
        blocks_per_request=req_paged / block_bytes,
        max_requests=None if budget is None else budget // req_paged,
        batch_fits=None if budget is None else batch * req_paged <= budget,
        waste_slots_at_context=waste_slots,
        waste_fraction_at_context=waste_slots / (context + waste_slots),
        expected_waste_fraction=mean_waste / (context + mean_waste),
        contiguous_request_bytes=contiguous,
        contiguous_max_requests=None if budget is None else budget // contiguous,
        contiguous_waste_fraction=1 - req_bytes / contiguous,
    )
