"""Random weights of a preset shape (kvscope.config.model_presets), seeded, with the byte-level tokenizer."""

from __future__ import annotations

import torch

from kvscope.config.model_config import ModelConfig, with_special_tokens
from kvscope.config.model_presets import get_preset
from kvscope.config.model_spec import RandomModelSpec
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.model_source import ModelSource
from kvscope.engine.model.support import config_refusal, runnable_presets
from kvscope.engine.model.tokenizer import ByteTokenizer, Tokenizer
from kvscope.errors import ModelShapeError, RecipeError


class RandomSource(ModelSource):
    spec: RandomModelSpec

    def shape(self) -> tuple[ModelConfig, Tokenizer]:
        shape = self.spec.shape
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

    def weights(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> LlamaModel:
        return LlamaModel.from_state_dict(config, random_state_dict(config, self.spec.seed), dtype, device)


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
