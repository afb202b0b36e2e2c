"""Model loading: random weights of a preset shape, a GGUF file, or a Hugging Face folder.

    load_model({"source": "random", "shape": "tiny", "seed": 0}, dtype, device)
    load_model({"source": "gguf", "path": "smollm2"}, ...)      # or a path to any llama GGUF
    load_model({"source": "hf", "path": "/models/x"}, ...)       # config.json + *.safetensors

Every source yields (LlamaModel, ModelConfig, Tokenizer). The shape comes from the presets
(kvscope.config.model_presets) or from the file's metadata, read by the same parsers the
one-shot commands use (kvscope.engine.checkpoint.formats); here the tokenizer's special ids are
added and what the engine cannot run is refused (kvscope.engine.model.support). GGUF tensors
are dequantized with the `gguf` package and Q/K rows are un-permuted back to the Hugging Face
rotate-half layout (llama.cpp's converter interleaves them). Problems with a file raise
ModelLoadError naming the file and what is wrong; problems with the spec itself raise RecipeError.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from kvscope.config.model_config import ModelConfig, with_special_tokens
from kvscope.config.model_presets import get_preset
from kvscope.config.recipe import Recipe
from kvscope.engine.checkpoint.formats import config_from_gguf, config_from_hf
from kvscope.engine.checkpoint.gguf_file import GGUFFile, read_gguf_file
from kvscope.engine.checkpoint.gguf_header import GGUFError
from kvscope.engine.checkpoint.packaged import GGUF_ALIASES, default_gguf_path
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.support import config_refusal, gguf_refusal, hf_refusal, runnable_presets
from kvscope.engine.model.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer
from kvscope.errors import ModelLoadError, ModelShapeError, RecipeError

Loaded = tuple[LlamaModel, ModelConfig, Tokenizer]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class LoadedModel:
    """A model with its config and tokenizer, loaded once and reused across engine resets."""

    model: torch.nn.Module | None  # None on a simulated device
    config: ModelConfig
    tokenizer: Tokenizer
    dtype: torch.dtype
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def load_for_recipe(recipe: Recipe) -> LoadedModel:
    dtype = _DTYPES[recipe.dtype]
    if recipe.device == "sim":  # a simulated device: the shape and the tokenizer, no weights
        config, tokenizer = load_shape(recipe.model.as_dict())
        return LoadedModel(None, config, tokenizer, dtype, torch.device("cpu"))
    device = resolve_device(recipe.device)
    model, config, tokenizer = load_model(recipe.model.as_dict(), dtype, device)
    return LoadedModel(model, config, tokenizer, dtype, device)


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
        return _hf_tokenizer(folder, _hf_config(folder))
    raise RecipeError(f"model.source: expected one of random, gguf, hf, got {source!r}")


def load_shape(spec: dict[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    """The config and tokenizer of a model spec, no weights read (what a simulated device runs on). Source
    "preset" names any published shape (kvscope.config.model_presets), with the byte tokenizer."""
    source = spec.get("source") if isinstance(spec, dict) else None
    if source == "preset":
        try:
            config = get_preset(str(spec.get("name")))
        except ModelShapeError as exc:
            raise RecipeError(f"model.name: {exc}") from None
        tokenizer: Tokenizer = ByteTokenizer(max(config.vocab_size, 256 + len(ByteTokenizer.SPECIALS)))
    elif source == "random":
        return _load_random_shape(spec)
    elif source == "gguf":
        path = _resolve_gguf_path(spec)
        gguf_file = read_gguf(path)
        tokenizer = BPETokenizer.from_gguf_metadata(gguf_file.metadata, str(path))
        with _load_errors():
            config = config_from_gguf(gguf_file.metadata, gguf_file.tensors, str(path))
    elif source == "hf":
        folder = _hf_folder(spec)
        config = _hf_config(folder)
        tokenizer = _hf_tokenizer(folder, config)
    else:
        raise RecipeError(f"model.source: expected one of random, gguf, hf, preset, got {source!r}")
    return with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids), tokenizer


def _refuse(where: Path, reason: str | None) -> None:
    """ModelLoadError naming the file when the engine cannot run what it describes."""
    if reason is not None:
        raise ModelLoadError(f"{where}: {reason}")


@contextmanager
def _load_errors() -> Iterator[None]:
    """A field a file lacks or gets wrong (model_formats' ModelShapeError names the file) -> ModelLoadError."""
    try:
        yield
    except ModelShapeError as exc:
        raise ModelLoadError(str(exc)) from None


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
    if not isinstance(shape, str):
        raise RecipeError(f"model.shape: expected a shape name, got {shape!r}")
    try:
        config = get_preset(shape)
    except ModelShapeError:
        raise RecipeError(f"model.shape: unknown model shape {shape!r} "
                          f"(known: {', '.join(runnable_presets())})") from None
    refusal = config_refusal(config)
    if refusal is not None:
        raise RecipeError(f"model.shape: {config.name} cannot run with random weights: {refusal} "
                          f"(runnable shapes: {', '.join(runnable_presets())})")
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
    _refuse(path, gguf_refusal(meta, tensors))
    tokenizer = BPETokenizer.from_gguf_metadata(meta, str(path))
    with _load_errors():
        config = config_from_gguf(meta, tensors, str(path))
    rotary_dims = meta.get("llama.rope.dimension_count")
    _refuse(path, config_refusal(config, None if rotary_dims is None else int(rotary_dims)))
    config = with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids)
    state = _state_dict(config, _GGUF_NAMES, lambda name: _dequantize(gguf_file, name), path)
    return _build(config, state, dtype, device, path), config, tokenizer


# --------------------------------------------------------------------------------------- hf folder


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


def _hf_config(folder: Path) -> ModelConfig:
    """The folder's config.json as a ModelConfig the engine can run (its own bos / eos ids included)."""
    config_path = folder / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{config_path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config_path}: expected a JSON object")
    _refuse(config_path, hf_refusal(raw))
    with _load_errors():
        config = config_from_hf(raw, str(config_path))
    _refuse(config_path, config_refusal(config))
    return config


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
    config = _hf_config(folder)
    tokenizer = _hf_tokenizer(folder, config)
    config = with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids)
    tensors = _read_safetensors(folder)

    def get(name: str) -> torch.Tensor:
        tensor = tensors.get(name)
        if tensor is None:
            raise ModelLoadError(f"{folder}: missing tensor {name}")
        return tensor.float()

    state = _state_dict(config, _HF_NAMES, get, folder)
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


class _TensorNames(NamedTuple):
    """Where a checkpoint format keeps the model's tensors; a layer's names follow its prefix ({i} = index)."""

    embed: str
    final_norm: str
    lm_head: str
    layer_prefix: str
    layer: tuple[str, ...]  # q, k, v, o, gate, up, down, attention norm, MLP norm
    interleaved_qk: bool    # Q/K rows in llama.cpp's interleaved RoPE order (un-permuted on load)


_GGUF_NAMES = _TensorNames(
    "token_embd.weight", "output_norm.weight", "output.weight", "blk.{i}.",
    ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
     "ffn_down.weight", "attn_norm.weight", "ffn_norm.weight"), interleaved_qk=True)
_HF_NAMES = _TensorNames(
    "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.{i}.",
    ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
     "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
     "post_attention_layernorm.weight"), interleaved_qk=False)


@contextmanager
def _shape_errors(where: Path, prefix: str) -> Iterator[None]:
    """Tensors of one layer that cannot be combined (wrong shapes) -> ModelLoadError."""
    try:
        yield
    except RuntimeError as exc:
        raise ModelLoadError(f"{where}: tensors {prefix}* do not fit the model's shape ({exc})") from None


def _state_dict(config: ModelConfig, names: _TensorNames, get: Callable[[str], torch.Tensor],
                where: Path) -> dict[str, torch.Tensor]:
    """LlamaModel's state dict from a checkpoint's tensors (`get` fetches one by its name there);
    Q, K, V and gate, up are fused as the model keeps them."""
    state = {"embed.weight": get(names.embed), "final_norm.weight": get(names.final_norm)}
    if not config.tie_embeddings:
        state["lm_head.weight"] = get(names.lm_head)
    for i in range(config.num_layers):
        prefix, ours = names.layer_prefix.format(i=i), f"layers.{i}."
        q, k, v, o, gate, up, down, attn_norm, mlp_norm = (get(prefix + name) for name in names.layer)
        with _shape_errors(where, prefix):
            if names.interleaved_qk:
                q, k = unpermute_rotary_rows(q, config.num_heads), unpermute_rotary_rows(k, config.num_kv_heads)
            state[ours + "qkv.weight"] = torch.cat((q, k, v), dim=0)
            state[ours + "o_proj.weight"] = o
            state[ours + "mlp.gate_up.weight"] = torch.cat((gate, up), dim=0)
            state[ours + "mlp.down.weight"] = down
            state[ours + "attn_norm.weight"] = attn_norm
            state[ours + "mlp_norm.weight"] = mlp_norm
    return state


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
