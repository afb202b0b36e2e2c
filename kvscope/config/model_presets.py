"""Named model shapes: published models for the estimators, and the small random-weight shapes of the engine.

Each published preset follows the model's `config.json` on the Hugging Face Hub (URL
beside it); parameter counts are the exact sums of the checkpoint's tensors where known,
else the model card's. `tiny` and `tiny-gqa3` exist for random weights only: they carry
the byte-level tokenizer's special ids (kvscope.engine.model.tokenizer.ByteTokenizer: <s> = 256,
</s> = 257, <|im_end|> = 260). Which presets the engine can run: kvscope.engine.model.support.
"""

from __future__ import annotations

from typing import TypedDict

from kvscope.config.model_config import ModelConfig
from kvscope.errors import ModelShapeError


class _SpecialTokens(TypedDict):
    bos_token_id: int
    eos_token_ids: tuple[int, ...]


_BYTE_TOKENS: _SpecialTokens = {"bos_token_id": 256, "eos_token_ids": (257, 260)}

PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
        ModelConfig("llama-2-7b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32, head_dim=128,
                    intermediate_size=11008, vocab_size=32000, num_params=6_738_415_616),
        # https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json
        ModelConfig("llama-2-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8, head_dim=128,
                    intermediate_size=28672, vocab_size=32000, num_params=68_976_648_192),
        # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
        ModelConfig("llama-3.1-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                    intermediate_size=14336, vocab_size=128256, num_params=8_030_261_248,
                    max_position_embeddings=131072, rope_theta=500000.0),
        # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json (the 8B's usual draft model)
        ModelConfig("llama-3.2-1b", num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8, head_dim=64,
                    intermediate_size=8192, vocab_size=128256, tie_embeddings=True, num_params=1_235_814_400,
                    max_position_embeddings=131072, rope_theta=500000.0),
        # https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
        ModelConfig("llama-3.1-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8, head_dim=128,
                    intermediate_size=28672, vocab_size=128256, num_params=70_553_706_496,
                    max_position_embeddings=131072, rope_theta=500000.0),
        # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json (4096-token window, every layer)
        ModelConfig("mistral-7b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                    intermediate_size=14336, vocab_size=32000, sliding_window=4096, num_params=7_241_732_096,
                    max_position_embeddings=32768),
        # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json (bias on q/k/v; window unused)
        ModelConfig("qwen2.5-7b", num_layers=28, hidden_size=3584, num_heads=28, num_kv_heads=4, head_dim=128,
                    intermediate_size=18944, vocab_size=152064, attention_bias=True, num_params=7_615_616_512,
                    max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6),
        # https://huggingface.co/google/gemma-2-9b/blob/main/config.json (4096 window on even layers)
        ModelConfig("gemma-2-9b", num_layers=42, hidden_size=3584, num_heads=16, num_kv_heads=8, head_dim=256,
                    intermediate_size=14336, vocab_size=256000, tie_embeddings=True, sliding_window=4096,
                    local_layers=tuple(range(0, 42, 2)), num_params=9_241_705_984, max_position_embeddings=8192,
                    rms_norm_eps=1e-6),
        # https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json (MLA 512 + 64; 256 experts, top 8)
        ModelConfig("deepseek-v3", num_layers=61, hidden_size=7168, num_heads=128, num_kv_heads=128, head_dim=192,
                    intermediate_size=18432, vocab_size=129280, kv_lora_rank=512, qk_rope_head_dim=64,
                    q_lora_rank=1536, v_head_dim=128, num_experts=256, experts_per_token=8, num_shared_experts=1,
                    moe_intermediate_size=2048, first_dense_layers=3, num_params=671_000_000_000,
                    max_position_embeddings=163840, rms_norm_eps=1e-6),
        # https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json
        ModelConfig("smollm2-135m", num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                    intermediate_size=1536, vocab_size=49152, tie_embeddings=True, num_params=134_515_008,
                    max_position_embeddings=8192, rope_theta=100000.0),
        # random weights only (fast tests and demos): byte tokenizer, 512 ids
        ModelConfig("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                    intermediate_size=128, vocab_size=512, tie_embeddings=True, **_BYTE_TOKENS),
        ModelConfig("tiny-gqa3", num_layers=2, hidden_size=96, num_heads=6, num_kv_heads=2, head_dim=16,
                    intermediate_size=192, vocab_size=512, **_BYTE_TOKENS),
    )
}

ALIASES: dict[str, str] = {
    "llama2-7b": "llama-2-7b",
    "llama-2-7b-hf": "llama-2-7b",
    "llama2-70b": "llama-2-70b",
    "llama-2-70b-hf": "llama-2-70b",
    "llama-3-8b": "llama-3.1-8b",
    "llama3.1-8b": "llama-3.1-8b",
    "meta-llama-3.1-8b": "llama-3.1-8b",
    "llama-3-70b": "llama-3.1-70b",
    "llama3.1-70b": "llama-3.1-70b",
    "meta-llama-3.1-70b": "llama-3.1-70b",
    "mistral-7b-v0.1": "mistral-7b",
    "qwen2.5-7b-instruct": "qwen2.5-7b",
    "qwen-2.5-7b": "qwen2.5-7b",
    "gemma2-9b": "gemma-2-9b",
    "deepseek-v3-base": "deepseek-v3",
    "deepseekv3": "deepseek-v3",
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "smollm-135m": "smollm2-135m",
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelConfig:
    """The preset called `name` (case-insensitive; `_` and spaces read as `-`; a few aliases)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = key.rsplit("/", 1)[-1] if "/" in key else key
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ModelShapeError(f"unknown model {name!r} (presets: {', '.join(PRESETS)}; "
                              "or pass a config.json, a .gguf file or a recipe .yaml)")
    return PRESETS[key]
