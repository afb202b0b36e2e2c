"""A Hugging Face folder: the shape from config.json, the tokenizer from tokenizer.json (the byte-level one
without it; EOS from generation_config.json), the weights from *.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kvscope.config.model_config import ModelConfig, with_special_tokens
from kvscope.config.model_spec import HFModelSpec
from kvscope.engine.checkpoint.formats import config_from_hf
from kvscope.engine.model.checkpoint_weights import HF_NAMES, build_model, state_dict
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.model_source import ModelSource, load_errors, refuse
from kvscope.engine.model.support import config_refusal, hf_refusal
from kvscope.engine.model.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer
from kvscope.errors import ModelLoadError


class HFSource(ModelSource):
    spec: HFModelSpec

    def __init__(self, spec: HFModelSpec) -> None:
        super().__init__(spec)
        self.folder = Path(spec.path).expanduser()
        if not self.folder.is_dir():
            raise ModelLoadError(f"{self.folder}: no such folder")

    def shape(self) -> tuple[ModelConfig, Tokenizer]:
        config = _hf_config(self.folder)
        tokenizer = _hf_tokenizer(self.folder, config)
        return with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids), tokenizer

    def weights(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> LlamaModel:
        tensors = _read_safetensors(self.folder)

        def get(name: str) -> torch.Tensor:
            tensor = tensors.get(name)
            if tensor is None:
                raise ModelLoadError(f"{self.folder}: missing tensor {name}")
            return tensor.float()

        state = state_dict(config, HF_NAMES, get, self.folder)
        return build_model(config, state, dtype, device, self.folder)


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
    refuse(config_path, hf_refusal(raw))
    with load_errors():
        config = config_from_hf(raw, str(config_path))
    refuse(config_path, config_refusal(config))
    return config


def _hf_tokenizer(folder: Path, config: ModelConfig) -> Tokenizer:
    eos_ids = _generation_eos(folder) or config.eos_token_ids
    if (folder / "tokenizer.json").exists():
        return BPETokenizer.from_folder(folder, eos_token_ids=eos_ids, bos_token_id=config.bos_token_id)
    try:
        return ByteTokenizer(config.vocab_size)
    except ValueError as exc:
        raise ModelLoadError(f"{folder}: no tokenizer.json, and {exc}") from None


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
