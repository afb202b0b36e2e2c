"""Model shapes: the architecture numbers the KV estimator and the roofline model need, and presets.

A ModelShape is a plain record (no torch): layer count, heads, KV heads, head
dim, hidden / FFN sizes, vocabulary, sliding window and which layers use it,
MLA (multi-head latent attention) and MoE fields, and the parameter count.
The engine builds one from its own model config; users name a preset here or
pass a file (see kvscope.inspector.model_sources).

Preset numbers come from each model's published Hugging Face `config.json`
(model cards linked in the comment beside each preset); parameter counts are
the exact sums of the checkpoint's tensors where known, else the model card's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


class ModelShapeError(ValueError):
    """A model that cannot be described: unknown preset, bad file, missing or impossible field."""


@dataclass(frozen=True, slots=True)
class ModelShape:
    """One decoder-only transformer's shape.

    head_dim: per-head width of Q and K (for MLA: nope + rope part).
    v_head_dim: per-head width of V (0 = same as head_dim).
    sliding_window: tokens a local layer attends to (0 = no window).
    local_layers: indices of the layers that use the window; None = all layers (when sliding_window > 0).
    kv_lora_rank / qk_rope_head_dim: MLA latent width and decoupled-RoPE width (0 when not MLA);
        an MLA layer caches kv_lora_rank + qk_rope_head_dim values per token, shared by all heads.
    q_lora_rank: MLA low-rank query projection (0 = full-rank query).
    num_experts / experts_per_token / num_shared_experts / moe_intermediate_size / first_dense_layers:
        MoE feed-forward (num_experts 0 = dense); the first `first_dense_layers` layers stay dense.
    num_params: total parameters (0 = unknown; count_params() estimates it from the shape).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    sliding_window: int = 0
    local_layers: tuple[int, ...] | None = None
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    q_lora_rank: int = 0
    v_head_dim: int = 0
    attention_bias: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_dense_layers: int = 0
    num_params: int = 0
    max_context: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for field_name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                           "intermediate_size", "vocab_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelShapeError(f"model {self.name!r}: {field_name} must be a positive integer, got {value!r}")
        for field_name in ("sliding_window", "kv_lora_rank", "qk_rope_head_dim", "q_lora_rank", "v_head_dim",
                           "num_experts", "experts_per_token", "num_shared_experts", "moe_intermediate_size",
                           "first_dense_layers", "num_params", "max_context"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ModelShapeError(f"model {self.name!r}: {field_name} must be an integer >= 0, got {value!r}")
        if not self.is_mla and self.num_heads % self.num_kv_heads:
            raise ModelShapeError(
                f"model {self.name!r}: num_heads ({self.num_heads}) is not a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.local_layers is not None:
            bad = [i for i in self.local_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ModelShapeError(f"model {self.name!r}: local_layers {bad} outside 0..{self.num_layers - 1}")

    # ---- derived facts -------------------------------------------------------------------------
    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def v_dim(self) -> int:
        """Per-head width of V."""
        return self.v_head_dim or self.head_dim

    @property
    def attention_kind(self) -> str:
        """"MLA", "MQA", "GQA" or "MHA"."""
        if self.is_mla:
            return "MLA"
        if self.num_kv_heads == 1:
            return "MQA"
        return "GQA" if self.num_kv_heads < self.num_heads else "MHA"

    def is_local(self, layer: int) -> bool:
        """Whether `layer` attends through the sliding window."""
        if self.sliding_window <= 0:
            return False
        return self.local_layers is None or layer in self.local_layers

    @property
    def num_local_layers(self) -> int:
        return sum(1 for i in range(self.num_layers) if self.is_local(i))

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_dense_layers

    def kv_elements_per_token_layer(self) -> int:
        """Values one layer caches per token: K and V of every KV head, or MLA's shared latent + rope key."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.num_kv_heads * (self.head_dim + self.v_dim)

    def mha_kv_elements_per_token_layer(self) -> int:
        """What one layer would cache per token with one K/V head per query head (plain multi-head attention)."""
        return self.num_heads * (self.head_dim + self.v_dim)


def count_params(shape: ModelShape) -> int:
    """Parameters implied by the shape: embeddings, attention, (MoE) MLP, RMSNorm weights, LM head."""
    h, layers = shape.hidden_size, shape.num_layers
    heads, d = shape.num_heads, shape.head_dim
    if shape.is_mla:
        rank, rope = shape.kv_lora_rank, shape.qk_rope_head_dim
        nope = d - rope
        if shape.q_lora_rank:
            q = h * shape.q_lora_rank + shape.q_lora_rank + shape.q_lora_rank * heads * d
        else:
            q = h * heads * d
        kv = h * (rank + rope) + rank + rank * heads * (nope + shape.v_dim)
        attn = q + kv + heads * shape.v_dim * h
    else:
        kvh = shape.num_kv_heads
        attn = h * heads * d + h * kvh * (d + shape.v_dim) + heads * shape.v_dim * h
        if shape.attention_bias:
            attn += heads * d + kvh * (d + shape.v_dim)
    dense_mlp = 3 * h * shape.intermediate_size
    total = 0
    for layer in range(layers):
        if shape.is_moe_layer(layer):
            per_expert = 3 * h * shape.moe_intermediate_size
            mlp = (shape.num_experts + shape.num_shared_experts) * per_expert + h * shape.num_experts
        else:
            mlp = dense_mlp
        total += attn + mlp + 2 * h
    embed = shape.vocab_size * h
    head = 0 if shape.tie_embeddings else shape.vocab_size * h
    return total + embed + head + h


def params_of(shape: ModelShape) -> int:
    """The shape's parameter count: the recorded one, else the count implied by the architecture."""
    return shape.num_params or count_params(shape)


def _alternate(num_layers: int) -> tuple[int, ...]:
    return tuple(range(0, num_layers, 2))


# Each preset's numbers follow the model's config.json on the Hugging Face Hub (URL beside it).
PRESETS: dict[str, ModelShape] = {
    s.name: s
    for s in (
        # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
        ModelShape("llama-2-7b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32, head_dim=128,
                   intermediate_size=11008, vocab_size=32000, num_params=6_738_415_616, max_context=4096,
                   rope_theta=10000.0, rms_norm_eps=1e-5),
        # https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json
        ModelShape("llama-2-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8, head_dim=128,
                   intermediate_size=28672, vocab_size=32000, num_params=68_976_648_192, max_context=4096,
                   rope_theta=10000.0, rms_norm_eps=1e-5),
        # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
        ModelShape("llama-3.1-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                   intermediate_size=14336, vocab_size=128256, num_params=8_030_261_248, max_context=131072,
                   rope_theta=500000.0, rms_norm_eps=1e-5),
        # https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
        ModelShape("llama-3.1-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8, head_dim=128,
                   intermediate_size=28672, vocab_size=128256, num_params=70_553_706_496, max_context=131072,
                   rope_theta=500000.0, rms_norm_eps=1e-5),
        # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json (4096-token window, every layer)
        ModelShape("mistral-7b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                   intermediate_size=14336, vocab_size=32000, sliding_window=4096, num_params=7_241_732_096,
                   max_context=32768, rope_theta=10000.0, rms_norm_eps=1e-5),
        # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json (bias on q/k/v; window unused)
        ModelShape("qwen2.5-7b", num_layers=28, hidden_size=3584, num_heads=28, num_kv_heads=4, head_dim=128,
                   intermediate_size=18944, vocab_size=152064, attention_bias=True, num_params=7_615_616_512,
                   max_context=131072, rope_theta=1000000.0, rms_norm_eps=1e-6),
        # https://huggingface.co/google/gemma-2-9b/blob/main/config.json (4096 window on even layers)
        ModelShape("gemma-2-9b", num_layers=42, hidden_size=3584, num_heads=16, num_kv_heads=8, head_dim=256,
                   intermediate_size=14336, vocab_size=256000, tie_embeddings=True, sliding_window=4096,
                   local_layers=_alternate(42), num_params=9_241_705_984, max_context=8192,
                   rope_theta=10000.0, rms_norm_eps=1e-6),
        # https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json (MLA 512 + 64; 256 experts, top 8)
        ModelShape("deepseek-v3", num_layers=61, hidden_size=7168, num_heads=128, num_kv_heads=128, head_dim=192,
                   intermediate_size=18432, vocab_size=129280, kv_lora_rank=512, qk_rope_head_dim=64,
                   q_lora_rank=1536, v_head_dim=128, num_experts=256, experts_per_token=8, num_shared_experts=1,
                   moe_intermediate_size=2048, first_dense_layers=3, num_params=671_000_000_000,
                   max_context=163840, rope_theta=10000.0, rms_norm_eps=1e-6),
        # https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json
        ModelShape("smollm2-135m", num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                   intermediate_size=1536, vocab_size=49152, tie_embeddings=True, num_params=134_515_008,
                   max_context=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
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


def get_preset(name: str) -> ModelShape:
    """The preset called `name` (case-insensitive; `_` and spaces read as `-`; a few aliases)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = key.rsplit("/", 1)[-1] if "/" in key else key
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ModelShapeError(f"unknown model {name!r} (presets: {', '.join(PRESETS)}; "
                              "or pass a config.json, a .gguf file or a recipe .yaml)")
    return PRESETS[key]


def with_name(shape: ModelShape, name: str) -> ModelShape:
    return replace(shape, name=name)
