"""Checkpoint metadata -> ModelConfig: one reader per format, shared by the loader and the one-shot commands.

    config_from_gguf(metadata, tensors, where)   GGUF key/values + tensor shapes (data never read)
    config_from_hf(config_json, where)           a Hugging Face config.json, already parsed (need_weights=False:
                                                 for the KV cache alone, intermediate_size / vocab_size optional)

Pure python (the one-shot commands import no torch). They describe what a file holds,
whatever the architecture (Llama, Mistral, Qwen2, Gemma 2/3, DeepSeek V2/V3, Mixtral);
what the engine can run is decided elsewhere (kvscope.engine.model.support). Missing or
impossible fields raise ModelShapeError naming `where` and the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeGuard

from kvscope.config.model_config import WEIGHTS_FIELDS, ModelConfig, count_params
from kvscope.engine.checkpoint.gguf_header import ArrayLength, HasDims, num_elements
from kvscope.errors import ModelShapeError


def _is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (narrows `value` to int for the type checker)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _built(where: str, fields: dict[str, Any]) -> ModelConfig:
    """The ModelConfig: a field the file does not give (None) takes ModelConfig's default, and the
    parameter count is worked out from the shape when the file does not hold the weights' sizes (and can be:
    none without intermediate_size or vocab_size)."""
    try:
        config = ModelConfig(**{key: value for key, value in fields.items() if value is not None})
    except ModelShapeError as exc:
        raise ModelShapeError(f"{where}: {exc}") from None
    if config.num_params or config.missing_weights_fields:
        return config
    return replace(config, num_params=count_params(config))


# ---- GGUF ----------------------------------------------------------------------------------------

# ModelConfig field <- integer metadata key after "{arch}."; the first four are required
_GGUF_INTS = {
    "num_layers": "block_count",
    "hidden_size": "embedding_length",
    "num_heads": "attention.head_count",
    "intermediate_size": "feed_forward_length",
    "max_position_embeddings": "context_length",
    "sliding_window": "attention.sliding_window",
    "kv_lora_rank": "attention.kv_lora_rank",
    "q_lora_rank": "attention.q_lora_rank",
    "num_experts": "expert_count",
    "experts_per_token": "expert_used_count",
    "num_shared_experts": "expert_shared_count",
    "moe_intermediate_size": "expert_feed_forward_length",
    "first_dense_layers": "leading_dense_block_count",
}
_GGUF_REQUIRED = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


def _meta_int(meta: Mapping[str, Any], key: str, where: str, required: bool = False) -> int | None:
    """An integer metadata value (None when absent and not required)."""
    value = meta.get(key)
    if isinstance(value, list) and value:  # per-layer arrays (e.g. head_count_kv): take the first
        value = value[0]
    if _is_int(value):
        if required and value <= 0:
            raise ModelShapeError(f"{where}: GGUF metadata {key!r} must be a positive integer (got {value})")
        return value
    if required or value is not None:
        raise ModelShapeError(f"{where}: GGUF metadata {key!r} missing or not an integer")
    return None


def _gguf_vocab(meta: Mapping[str, Any], arch: str, tensors: Mapping[str, HasDims]) -> int:
    vocab = meta.get(arch + ".vocab_size")
    if _is_int(vocab) and vocab:
        return vocab
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = tokens.length if isinstance(tokens, ArrayLength) else len(tokens) if isinstance(tokens, list) else 0
    if not vocab and "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].dims[-1]
    return vocab


def _gguf_name(meta: Mapping[str, Any], where: str) -> str:
    """basename-size (e.g. smollm2-135m), else general.name, else the file's stem; lower case, dashes."""
    name = meta.get("general.basename") or meta.get("general.name")
    if not isinstance(name, str) or not name:
        name = os.path.splitext(os.path.basename(where))[0]
    size = meta.get("general.size_label")
    if isinstance(size, str) and size.lower() not in name.lower():
        name = f"{name}-{size}"
    return name.lower().replace(" ", "-")


def _gguf_local_layers(arch: str, num_layers: int) -> tuple[int, ...] | None:
    """Which layers use the window, by family (None = all)."""
    if arch == "gemma2":
        return tuple(range(0, num_layers, 2))
    if arch == "gemma3":
        return tuple(i for i in range(num_layers) if (i + 1) % 6)
    return None


def config_from_gguf(metadata: Mapping[str, Any], tensors: Mapping[str, HasDims], where: str) -> ModelConfig:
    """The ModelConfig of a GGUF file: `{arch}.*` metadata keys and tensor names / shapes (data never read)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelShapeError(f"{where}: GGUF metadata 'general.architecture' missing")

    def meta(key: str) -> int | None:
        return _meta_int(metadata, f"{arch}.{key}", where)

    fields: dict[str, Any] = {field: _meta_int(metadata, f"{arch}.{key}", where, field in _GGUF_REQUIRED)
                              for field, key in _GGUF_INTS.items()}
    heads, mla = fields["num_heads"], bool(fields["kv_lora_rank"])
    head_dim = meta("attention.key_length") or fields["hidden_size"] // heads
    v_dim = meta("attention.value_length") or head_dim
    fields.update(
        name=_gguf_name(metadata, where),
        num_kv_heads=heads if mla else meta("attention.head_count_kv") or heads,
        head_dim=head_dim,
        v_head_dim=v_dim if v_dim != head_dim else 0,
        qk_rope_head_dim=meta("rope.dimension_count") if mla else 0,
        vocab_size=_gguf_vocab(metadata, arch, tensors),
        tie_embeddings="output.weight" not in tensors,
        local_layers=_gguf_local_layers(arch, fields["num_layers"]) if fields["sliding_window"] else None,
        attention_bias="blk.0.attn_q.bias" in tensors,
        num_params=num_elements(tensors.values()),
        rope_theta=_number(metadata.get(f"{arch}.rope.freq_base")),
        rms_norm_eps=_number(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon")),
    )
    return _built(where, fields)


# ---- Hugging Face config.json ------------------------------------------------------------------

# ModelConfig field <- integer config.json key; the first five are required
_HF_INTS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "kv_lora_rank": "kv_lora_rank",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "q_lora_rank": "q_lora_rank",
    "experts_per_token": "num_experts_per_tok",
    "num_shared_experts": "n_shared_experts",
    "first_dense_layers": "first_k_dense_replace",
}
# what transformers' LlamaConfig assumes when config.json leaves these out (the engine must match it)
_HF_DEFAULT_EPS = 1e-6
_HF_DEFAULT_CONTEXT = 2048
_HF_REQUIRED = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size")


def _cfg_int(cfg: Mapping[str, Any], key: str) -> int | None:
    """An integer field, None when absent or not an integer."""
    value = cfg.get(key)
    return value if _is_int(value) else None


def _need_int(cfg: Mapping[str, Any], key: str, where: str) -> int:
    value = cfg.get(key)
    if not _is_int(value):
        raise ModelShapeError(f"{where}: field {key!r} missing or not an integer (got {value!r})")
    if value <= 0:
        raise ModelShapeError(f"{where}: field {key!r} must be a positive integer (got {value!r})")
    return value


def _hf_local_layers(cfg: Mapping[str, Any], num_layers: int) -> tuple[int, ...] | None:
    """Which layers use the window: from `layer_types`, else by model family (None = all)."""
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        return tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
    model_type = str(cfg.get("model_type", ""))
    if model_type == "gemma2":
        return tuple(range(0, num_layers, 2))
    pattern = _cfg_int(cfg, "sliding_window_pattern") or 0
    if pattern > 1:  # gemma3: every `pattern`-th layer is global
        return tuple(i for i in range(num_layers) if (i + 1) % pattern)
    if model_type.startswith("qwen2"):
        start = _cfg_int(cfg, "max_window_layers")
        return tuple(range(num_layers if start is None else start, num_layers))
    return None


def rope_parameters(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """RoPE settings: `rope_parameters` (transformers 5) or `rope_scaling` (older), {} when neither."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    return rope if isinstance(rope, Mapping) else {}


def _special_ids(cfg: Mapping[str, Any]) -> tuple[int | None, tuple[int, ...]]:
    bos, eos = cfg.get("bos_token_id"), cfg.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [eos]
    return (bos if _is_int(bos) else None), tuple(i for i in eos_ids if _is_int(i))


def _hf_name(cfg: Mapping[str, Any], where: str) -> str:
    """The last part of `_name_or_path`, else the name of the folder holding config.json."""
    name = str(cfg.get("_name_or_path") or os.path.basename(os.path.dirname(os.path.abspath(where))) or where)
    return name.rstrip("/").rsplit("/", 1)[-1]


def config_from_hf(config_json: Mapping[str, Any], where: str, need_weights: bool = True) -> ModelConfig:
    """The ModelConfig of a Hugging Face `config.json` (a multimodal one's `text_config` when it has one).
    need_weights=False (the KV cache alone): intermediate_size and vocab_size may be absent (0 = not given)."""
    cfg = config_json
    if isinstance(cfg.get("text_config"), Mapping):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    optional = () if need_weights else tuple(f for f in WEIGHTS_FIELDS if cfg.get(_HF_INTS[f]) is None)
    fields: dict[str, Any] = {field: _need_int(cfg, key, where) if field in _HF_REQUIRED else _cfg_int(cfg, key)
                              for field, key in _HF_INTS.items() if field not in optional}
    fields.update(dict.fromkeys(optional, 0))
    heads, mla = fields["num_heads"], bool(fields["kv_lora_rank"])
    if mla:
        head_dim = (_cfg_int(cfg, "qk_nope_head_dim") or 0) + (fields["qk_rope_head_dim"] or 0)
    else:
        head_dim = _cfg_int(cfg, "head_dim") or fields["hidden_size"] // heads
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False or not _is_int(window):
        window = 0
    num_experts = (_cfg_int(cfg, "n_routed_experts") or _cfg_int(cfg, "num_local_experts")
                   or _cfg_int(cfg, "num_experts") or 0)
    bos, eos = _special_ids(cfg)
    if fields["max_position_embeddings"] is None:
        fields["max_position_embeddings"] = _HF_DEFAULT_CONTEXT
    fields.update(
        name=_hf_name(cfg, where),
        num_kv_heads=heads if mla else _cfg_int(cfg, "num_key_value_heads") or heads,
        head_dim=head_dim,
        v_head_dim=_cfg_int(cfg, "v_head_dim") if mla else 0,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        sliding_window=window,
        local_layers=_hf_local_layers(cfg, fields["num_layers"]) if window else None,
        attention_bias=bool(cfg.get("attention_bias")) or str(cfg.get("model_type", "")).startswith("qwen2"),
        num_experts=num_experts,
        moe_intermediate_size=_cfg_int(cfg, "moe_intermediate_size") or (
            fields["intermediate_size"] if num_experts else 0),
        rope_theta=_number(cfg.get("rope_theta", rope_parameters(cfg).get("rope_theta"))),
        rms_norm_eps=_number(cfg.get("rms_norm_eps", cfg.get("layer_norm_eps", _HF_DEFAULT_EPS))),
        bos_token_id=bos,
        eos_token_ids=eos,
    )
    return _built(where, fields)
