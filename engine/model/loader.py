"""Model loading: random weights of a preset shape, a GGUF file, or a Hugging Face folder.

    load_model({"source": "random", "shape": "tiny", "seed": 0}, dtype, device)
    load_model({"source": "gguf", "path": "smollm2"}, ...)      # or a path to any llama GGUF
    load_model(recipe.model, ...)                               # a validated spec (kvscope.config.model_spec)

Every source yields (LlamaModel, ModelConfig, Tokenizer): one ModelSource subclass each (random_source,
gguf_source, hf_source, preset_source) knows its shape and tokenizer and its weights. The shape comes from the
presets (kvscope.config.model_presets) or from the file's metadata, read by the same parsers the one-shot
commands use (kvscope.engine.checkpoint.formats); the tokenizer's special ids are added and what the engine
cannot run is refused (kvscope.engine.model.support). Problems with a file raise ModelLoadError naming the
file and what is wrong; problems with the spec itself raise RecipeError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from kvscope.config.model_config import ModelConfig
from kvscope.config.model_spec import ModelSpec, model_spec
from kvscope.config.recipe import Recipe
from kvscope.engine.model.gguf_source import GGUFSource
from kvscope.engine.model.hf_source import HFSource
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.model_source import ModelSource
from kvscope.engine.model.preset_source import PresetSource
from kvscope.engine.model.random_source import RandomSource
from kvscope.engine.model.tokenizer import Tokenizer
from kvscope.errors import RecipeError

Loaded = tuple[LlamaModel, ModelConfig, Tokenizer]
SOURCES: dict[str, type[ModelSource]] = {"random": RandomSource, "gguf": GGUFSource, "hf": HFSource,
                                         "preset": PresetSource}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class LoadedModel:
    """A model with its config and tokenizer, loaded once and reused across engine resets."""

    model: LlamaModel | None  # None on a simulated device
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
        config, tokenizer = load_shape(recipe.model)
        return LoadedModel(None, config, tokenizer, dtype, torch.device("cpu"))
    device = resolve_device(recipe.device)
    model, config, tokenizer = load_model(recipe.model, dtype, device)
    return LoadedModel(model, config, tokenizer, dtype, device)


def model_source(spec: ModelSpec | Mapping[str, Any]) -> ModelSource:
    """The source of a model spec (a mapping is validated first: RecipeError `model.<field>: ...`)."""
    checked = model_spec(spec)
    return SOURCES[checked.source](checked)


def load_shape(spec: ModelSpec | Mapping[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    """The config and tokenizer of a model spec, no weights read (what a simulated device runs on); a spec's
    `name` renames the model."""
    return _named_shape(model_source(spec))


def load_tokenizer(spec: ModelSpec | Mapping[str, Any]) -> Tokenizer:
    """Only the tokenizer of a model spec (no weights are read): fast, for CLIs and tests."""
    return model_source(spec).shape()[1]


def load_model(spec: ModelSpec | Mapping[str, Any], dtype: torch.dtype, device: torch.device) -> Loaded:
    """Build the model, its config and its tokenizer from a model spec (see the module docstring)."""
    source = model_source(spec)
    source.check()
    config, tokenizer = _named_shape(source)
    return source.weights(config, dtype, torch.device(device)), config, tokenizer


def _named_shape(source: ModelSource) -> tuple[ModelConfig, Tokenizer]:
    config, tokenizer = source.shape()
    return (replace(config, name=source.spec.name) if source.spec.name else config), tokenizer
