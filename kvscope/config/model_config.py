"""ModelConfig: the one description of a decoder-only transformer, and its parameter count.

Pure python (no torch, no numpy). The engine builds its model and KV cache from it;
the KV estimator and the roofline cost model (kvscope.inspector) read the same record.
It is the union of what both need: the Llama core, plus sliding windows, MLA
(multi-head latent attention) and MoE fields that only the analytic models use
(the engine refuses those: kvscope.engine.model.support). Presets live in
kvscope.config.model_presets; GGUF and config.json readers in kvscope.engine.checkpoint.formats.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kvscope.errors import ModelShapeError

_POSITIVE = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings")
# what only the weights' size needs (the parameter count, the roofline, the engine), not the KV cache's
WEIGHTS_FIELDS = ("intermediate_size", "vocab_size")
_NON_NEGATIVE = ("sliding_window", "kv_lora_rank", "qk_rope_head_dim", "q_lora_rank", "v_head_dim", "num_experts",
                 "experts_per_token", "num_shared_experts", "moe_intermediate_size", "first_dense_layers",
                 "num_params", *WEIGHTS_FIELDS)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One decoder-only transformer.

    head_dim: per-head width of Q and K (for MLA: nope + rope part).
    v_head_dim: per-head width of V (0 = same as head_dim).
    sliding_window: tokens a local layer attends to (0 = no window).
    local_layers: indices of the layers that use the window; None = all layers (when sliding_window > 0).
    kv_lora_rank / qk_rope_head_dim: MLA latent width and decoupled-RoPE width (0 when not MLA);
        an MLA layer caches kv_lora_rank + qk_rope_head_dim values per token, shared by all heads.
    q_lora_rank: MLA low-rank query projection (0 = full-rank query).
    num_experts / experts_per_token / num_shared_experts / moe_intermediate_size / first_dense_layers:
        MoE feed-forward (num_experts 0 = dense); the first `first_dense_layers` layers stay dense.
    intermediate_size / vocab_size: the MLP's width and the vocabulary; 0 = not given (a config.json read
        for its KV cache alone: `kvscope kv`); the parameter count needs both (missing_weights_fields).
    num_params: total parameters (0 = unknown; params_of() then counts them from the shape).
    bos_token_id / eos_token_ids: the tokenizer's special ids (the loader sets the tokenizer's own).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    # sliding window
    sliding_window: int = 0
    local_layers: tuple[int, ...] | None = None
    # MLA
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    q_lora_rank: int = 0
    v_head_dim: int = 0
    attention_bias: bool = False
    # MoE
    num_experts: int = 0
    experts_per_token: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_dense_layers: int = 0
    # size, context, RoPE and norm
    num_params: int = 0
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # the tokenizer's special ids
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for names, least, wanted in ((_POSITIVE, 1, "a positive integer"), (_NON_NEGATIVE, 0, "an integer >= 0")):
            for field_name in names:
                value = getattr(self, field_name)
                if not isinstance(value, int) or isinstance(value, bool) or value < least:
                    raise ModelShapeError(f"model {self.name!r}: {field_name} must be {wanted}, got {value!r}")
        if not self.is_mla and self.num_heads % self.num_kv_heads:
            raise ModelShapeError(
                f"model {self.name!r}: num_heads ({self.num_heads}) is not a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.local_layers is not None:
            bad = [i for i in self.local_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ModelShapeError(f"model {self.name!r}: local_layers {bad} outside 0..{self.num_layers - 1}")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            raise ModelShapeError(f"model {self.name!r}: rope_theta and rms_norm_eps must be positive")

    # ---- derived facts -------------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        """Width of the query projection output (num_heads * head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (and of the value) projection output (num_kv_heads * head_dim)."""
        return self.num_kv_heads * self.head_dim

    @property
    def missing_weights_fields(self) -> tuple[str, ...]:
        """The fields only the weights need (WEIGHTS_FIELDS) that this shape does not give."""
        return tuple(name for name in WEIGHTS_FIELDS if not getattr(self, name))

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def v_dim(self) -> int:
        """Per-head width of V."""
        return self.v_head_dim or self.head_dim

    @property
    def attention_kind(self) -> str:
        """"MLA", "MQA", "GQA" or "MHA"."""
        if self.is_mla:
            return "MLA"
        if self.num_kv_heads == 1:
            return "MQA"
        return "GQA" if self.num_kv_heads < self.num_heads else "MHA"

    def is_local(self, layer: int) -> bool:
        """Whether `layer` attends through the sliding window."""
        if self.sliding_window <= 0:
            return False
        return self.local_layers is None or layer in self.local_layers

    @property
    def num_local_layers(self) -> int:
        return sum(1 for i in range(self.num_layers) if self.is_local(i))

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_dense_layers

    def kv_elements_per_token_layer(self) -> int:
        """Values one layer caches per token: K and V of every KV head, or MLA's shared latent + rope key."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.num_kv_heads * (self.head_dim + self.v_dim)

    def mha_kv_elements_per_token_layer(self) -> int:
        """What one layer would cache per token with one K/V head per query head (plain multi-head attention)."""
        return self.num_heads * (self.head_dim + self.v_dim)


def with_special_tokens(config: ModelConfig, bos_token_id: int | None, eos_token_ids: tuple[int, ...]) -> ModelConfig:
    """A copy of config with the tokenizer's special ids."""
    return replace(config, bos_token_id=bos_token_id, eos_token_ids=tuple(eos_token_ids))


def _attention_params(config: ModelConfig) -> int:
    h, heads, d, v = config.hidden_size, config.num_heads, config.head_dim, config.v_dim
    if config.is_mla:
        rank, rope = config.kv_lora_rank, config.qk_rope_head_dim
        q_rank = config.q_lora_rank
        q = h * q_rank + q_rank + q_rank * heads * d if q_rank else h * heads * d
        kv = h * (rank + rope) + rank + rank * heads * (d - rope + v)
        return q + kv + heads * v * h
    kvh = config.num_kv_heads
    attn = h * heads * d + h * kvh * (d + v) + heads * v * h
    if config.attention_bias:
        attn += heads * d + kvh * (d + v)
    return attn


def count_params(config: ModelConfig) -> int:
    """Parameters implied by the shape: embeddings, attention, (MoE) MLP, RMSNorm weights, LM head. A shape
    without intermediate_size or vocab_size has no count: ModelShapeError naming the field."""
    missing = config.missing_weights_fields
    if missing:
        raise ModelShapeError(f"model {config.name!r}: the parameter count needs {' and '.join(missing)}, "
                              f"which the model does not give")
    h = config.hidden_size
    attn = _attention_params(config)
    dense_mlp = 3 * h * config.intermediate_size
    moe_mlp = ((config.num_experts + config.num_shared_experts) * 3 * h * config.moe_intermediate_size
               + h * config.num_experts)
    total = sum(attn + (moe_mlp if config.is_moe_layer(layer) else dense_mlp) + 2 * h
                for layer in range(config.num_layers))
    embed = config.vocab_size * h
    head = 0 if config.tie_embeddings else embed
    return total + embed + head + h


def params_of(config: ModelConfig) -> int | None:
    """The model's parameter count: the recorded one, else the count implied by the architecture; None when
    neither is known (no num_params, and intermediate_size or vocab_size not given)."""
    if config.num_params:
        return config.num_params
    return None if config.missing_weights_fields else count_params(config)
