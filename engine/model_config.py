"""The shape of a Llama-family decoder, and the named shapes random models are built from.

Pure python (no torch): the KV estimator and the recipes read these shapes too.
Random models get the byte-level tokenizer, so the named shapes carry its special ids
(kvscope.engine.tokenizer.ByteTokenizer: <s> = 256, </s> = 257, <|im_end|> = 260).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Hyperparameters of one decoder: everything the forward pass and the KV cache need."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_kv_heads", "head_dim", "max_position_embeddings")
        for field_name in positive:
            value = getattr(self, field_name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model {self.name!r}: {field_name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"model {self.name!r}: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"model {self.name!r}: head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            raise ValueError(f"model {self.name!r}: rope_theta and rms_norm_eps must be positive")

    @property
    def q_size(self) -> int:
        """Width of the query projection output (num_heads * head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (and of the value) projection output (num_kv_heads * head_dim)."""
        return self.num_kv_heads * self.head_dim

    def num_parameters(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        per_layer = attn + mlp + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_embeddings else embed
        return embed + head + self.num_layers * per_layer + self.hidden_size


_BYTE_BOS = 256
_BYTE_EOS = (257, 260)

NAMED_SHAPES: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position_embeddings=4096, tie_embeddings=True, bos_token_id=_BYTE_BOS, eos_token_ids=_BYTE_EOS,
    ),
    "tiny-gqa3": ModelConfig(
        name="tiny-gqa3", vocab_size=512, hidden_size=96, intermediate_size=192, num_layers=2,
        num_heads=6, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position_embeddings=4096, tie_embeddings=False, bos_token_id=_BYTE_BOS, eos_token_ids=_BYTE_EOS,
    ),
    "smollm2-135m": ModelConfig(
        name="smollm2-135m", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
        num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_embeddings=True, bos_token_id=_BYTE_BOS, eos_token_ids=_BYTE_EOS,
    ),
}


def named_shape(name: str) -> ModelConfig:
    """The named shape, or KeyError listing the known ones."""
    try:
        return NAMED_SHAPES[name]
    except KeyError:
        raise KeyError(f"unknown model shape {name!r} (known: {', '.join(sorted(NAMED_SHAPES))})") from None


def with_special_tokens(config: ModelConfig, bos_token_id: int | None, eos_token_ids: tuple[int, ...]) -> ModelConfig:
    """A copy of config with the tokenizer's special ids."""
    return replace(config, bos_token_id=bos_token_id, eos_token_ids=tuple(eos_token_ids))
