"""What the engine can run: the checks that refuse a model its Llama forward pass cannot compute.

Each check returns the reason as a short phrase (None when the model is fine); the loader
adds the file or recipe field. The model must be a Llama-family decoder: GQA / MHA
attention without bias, full RoPE without scaling, RMSNorm, a SwiGLU (silu) MLP. What a
ModelConfig can describe but the engine cannot run (MLA, MoE, sliding windows) is refused
here, and so is what only the file says (architecture, rope scaling, activation).
Pure python: the presets' runnable names are listed without torch.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from kvscope.config.model_config import ModelConfig
from kvscope.config.model_presets import PRESETS
from kvscope.engine.checkpoint.formats import rope_parameters


def config_refusal(config: ModelConfig, rotary_dims: int | None = None) -> str | None:
    """Why the engine cannot run this shape (None: it can). rotary_dims: how many of a head's
    dimensions the file says RoPE rotates (None: all of them)."""
    if config.missing_weights_fields:
        return f"{' and '.join(config.missing_weights_fields)} not given"
    if config.is_mla:
        return "multi-head latent attention (MLA) is not supported"
    if config.is_moe:
        return "mixture-of-experts (MoE) layers are not supported"
    if config.sliding_window:
        return f"sliding-window attention (window {config.sliding_window}) is not supported"
    if config.attention_bias:
        return "attention bias is not supported"
    if config.v_dim != config.head_dim:
        return f"v_head_dim {config.v_dim} != head_dim {config.head_dim} is not supported"
    if rotary_dims is not None and rotary_dims != config.head_dim:
        return (f"partial rotary embeddings (rope.dimension_count {rotary_dims} != {config.head_dim}) "
                "are not supported")
    if config.head_dim % 2:
        return f"head_dim must be even for RoPE, got {config.head_dim}"
    return None


def gguf_refusal(metadata: Mapping[str, Any], tensor_names: Container[str]) -> str | None:
    """What a GGUF file's metadata asks for that the engine cannot do (checked before its shape is read)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        return f"unsupported architecture {arch!r} (expected 'llama')"
    if "rope_freqs.weight" in tensor_names:
        return "per-frequency rope scaling (rope_freqs.weight) is not supported"
    scaling = metadata.get("llama.rope.scaling.type")
    if scaling not in (None, "none") and float(metadata.get("llama.rope.scaling.factor", 1.0)) != 1.0:
        return f"rope scaling {scaling!r} is not supported"
    return None


def hf_refusal(config_json: Mapping[str, Any]) -> str | None:
    """What a Hugging Face config.json asks for that the engine cannot do (checked before its shape is read)."""
    model_type = config_json.get("model_type")
    if model_type != "llama":
        return f"unsupported model_type {model_type!r} (expected 'llama')"
    if config_json.get("hidden_act", "silu") != "silu":
        return f"hidden_act {config_json['hidden_act']!r} is not supported (expected 'silu')"
    if config_json.get("mlp_bias"):
        return "mlp_bias is not supported"
    factor = config_json.get("partial_rotary_factor", 1.0)
    if factor != 1.0:
        return f"partial rotary embeddings (partial_rotary_factor {factor}) are not supported"
    rope = rope_parameters(config_json)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        return f"rope scaling {rope_type!r} is not supported"
    return None


def runnable_presets() -> list[str]:
    """The presets the engine can build with random weights."""
    return [name for name, config in PRESETS.items() if config_refusal(config) is None]
