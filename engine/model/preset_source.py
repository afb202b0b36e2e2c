"""A published shape by name (kvscope.config.model_presets) with the byte-level tokenizer: no weights, so a
simulated device only."""

from __future__ import annotations

import torch

from kvscope.config.model_config import ModelConfig, with_special_tokens
from kvscope.config.model_presets import get_preset
from kvscope.config.model_spec import PRESET_HAS_NO_WEIGHTS, PresetModelSpec
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.model_source import ModelSource
from kvscope.engine.model.tokenizer import ByteTokenizer, Tokenizer
from kvscope.errors import RecipeError


class PresetSource(ModelSource):
    spec: PresetModelSpec

    def shape(self) -> tuple[ModelConfig, Tokenizer]:
        config = get_preset(self.spec.name)  # a known name: the spec checked it
        tokenizer = ByteTokenizer(max(config.vocab_size, 256 + len(ByteTokenizer.SPECIALS)))
        return with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids), tokenizer

    def weights(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> LlamaModel:
        raise RecipeError(f"model.source: {PRESET_HAS_NO_WEIGHTS}")
