"""What a request must be before an engine queues it: a prompt it can read, a length its context and pool
can hold. Shared by an engine and by a deployment's proxy, which answers for engines it does not hold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvscope.engine.core.math_utils import cdiv
from kvscope.errors import RequestError

if TYPE_CHECKING:
    from kvscope.config.model_config import ModelConfig
    from kvscope.config.recipe import Recipe
    from kvscope.engine.model.tokenizer import Tokenizer

Prompt = str | Sequence[int] | Sequence[dict[str, str]]


class PromptTooLong(RequestError):
    """A prompt refused before it was encoded: it has at least `num_tokens` tokens (exactly, for token ids),
    `limit` or more."""

    def __init__(self, num_tokens: int, limit: int, exact: bool) -> None:
        super().__init__(f"prompt: {'' if exact else 'at least '}{num_tokens} tokens, {limit} or more")
        self.num_tokens = num_tokens
        self.limit = limit
        self.exact = exact


def max_model_len(recipe: Recipe, config: ModelConfig) -> int:
    """The longest sequence an engine of this recipe serves: the recipe's limit within the model's."""
    return min(recipe.scheduler.max_model_len, config.max_position_embeddings)


class RequestCheck:
    """Encodes prompts and refuses requests an engine of `recipe` with a pool of num_blocks could never serve."""

    def __init__(self, recipe: Recipe, config: ModelConfig, tokenizer: Tokenizer, num_blocks: int) -> None:
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.vocab_size = config.vocab_size
        self.max_model_len = max_model_len(recipe, config)
        self.block_size = recipe.cache.block_size
        self.num_blocks = num_blocks

    def encode_prompt(self, prompt: Prompt, limit: int | None = None) -> list[int]:
        """Token ids of a prompt given as text, token ids or chat messages; RequestError naming what is wrong.
        With `limit`, a prompt that surely has `limit` tokens or more is refused (PromptTooLong) unencoded."""
        if isinstance(prompt, str):
            self._refuse_long_text(prompt, limit)
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, (list, tuple)):
            raise RequestError(f"prompt: expected text, a list of token ids or a list of chat messages, "
                               f"got {type(prompt).__name__}")
        if prompt and all(isinstance(m, dict) for m in prompt):
            text = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)
            self._refuse_long_text(text, limit)
            return self.tokenizer.encode(text, add_bos=False)
        if limit is not None and len(prompt) >= limit:
            raise PromptTooLong(len(prompt), limit, exact=True)
        vocab = self.vocab_size
        for i, token in enumerate(prompt):
            if not isinstance(token, int) or isinstance(token, bool):
                raise RequestError(f"prompt[{i}]: token id {token!r} is not an integer")
            if not 0 <= token < vocab:
                raise RequestError(f"prompt[{i}]: token id {token} outside the vocabulary (0..{vocab - 1})")
        return list(prompt)

    def _refuse_long_text(self, text: str, limit: int | None) -> None:
        if limit is not None:
            at_least = self.tokenizer.min_tokens(text)
            if at_least >= limit:
                raise PromptTooLong(at_least, limit, exact=False)

    def blocks_needed(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """KV blocks a request holds at its longest (its output cut to what the context leaves)."""
        out = min(max_tokens, max(self.max_model_len - num_prompt_tokens, 0))
        return cdiv(num_prompt_tokens + out, self.block_size)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """The output limit this request gets; RequestError if it can never be served."""
        if num_prompt_tokens == 0:
            raise RequestError("empty prompt")
        if num_prompt_tokens >= self.max_model_len:
            raise RequestError(f"prompt has {num_prompt_tokens} tokens, longer than the context "
                               f"(max_model_len {self.max_model_len} leaves no room to generate)")
        s = self.recipe.scheduler
        if s.policy == "continuous" and not s.chunked_prefill and num_prompt_tokens > s.max_num_batched_tokens:
            raise RequestError(f"prompt has {num_prompt_tokens} tokens, more than a step's token budget "
                               f"(max_num_batched_tokens {s.max_num_batched_tokens}) with chunked prefill off: "
                               f"it could never be scheduled")
        max_tokens = min(max_tokens, self.max_model_len - num_prompt_tokens)
        need = self.blocks_needed(num_prompt_tokens, max_tokens)
        if need > self.num_blocks:
            raise RequestError(f"needs {need} KV blocks ({num_prompt_tokens} prompt + {max_tokens} output "
                               f"tokens at block size {self.block_size}) but the pool has {self.num_blocks}")
        return max_tokens
