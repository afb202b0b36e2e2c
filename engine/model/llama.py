"""A Llama-family decoder over a flat, unpadded token batch with a paged KV cache.

RMSNorm, rotary embeddings (Hugging Face rotate-half layout, the model's theta), grouped-query
attention over the paged KV pools, SwiGLU MLP, tied or untied embeddings. Q/K/V are one fused
projection, gate/up another. Parameter names (what loaders fill):

    embed.weight                      [vocab, hidden]
    layers.{i}.attn_norm.weight       [hidden]
    layers.{i}.qkv.weight             [(heads + 2 * kv_heads) * head_dim, hidden]   rows: q, k, v
    layers.{i}.o_proj.weight          [hidden, heads * head_dim]
    layers.{i}.mlp_norm.weight        [hidden]
    layers.{i}.mlp.gate_up.weight     [2 * intermediate, hidden]                    rows: gate, up
    layers.{i}.mlp.down.weight        [hidden, intermediate]
    final_norm.weight                 [hidden]
    lm_head.weight                    [vocab, hidden]   (only when embeddings are untied)

`bind_kv_cache` gives every layer its K/V pools and the attention backend once (the model runner
does it); each forward then takes only the tokens and the step's ForwardContext. The backend's kernels
serve the model's ops from then on: its matmul for every linear layer and the LM head, its norms, RoPE and
activation where it offers them (kvscope.engine.model.attention); until then the model's own torch code runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from kvscope.config.model_config import ModelConfig
from kvscope.engine.model.attention import AttentionBackend, AttentionMetadata, FusedOps, Matmul
from kvscope.engine.model.forward_context import ForwardContext


class Linear(nn.Module):
    """y = x @ weight.T without bias. Weights start uninitialized (torch.empty): loaders fill them.

    `matmul(x, weight)`: the backend's (kvscope's C kernel on a CPU in float32, F.linear elsewhere), F.linear
    until one is bound."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.matmul: Matmul = F.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.weight)


class Embedding(nn.Module):
    """Token id -> row of weight. Uninitialized like Linear."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 like Hugging Face's LlamaRMSNorm.

    `fused`: the backend's fused kernels (their rms_norm), or None for this torch code."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps
        self.fused: FusedOps | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused.rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32:  # one aten op; bit-equal to the lines below in our checks (torch 2.13)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position up to max_positions; applied by indexing with positions.

    One instance serves every layer. `fused`: the backend's fused kernels (their rope), or None."""

    cos: torch.Tensor  # buffers (register_buffer), [max_positions, head_dim]
    sin: torch.Tensor

    def __init__(self, head_dim: int, theta: float, max_positions: int) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.int64).float(), inv_freq)
        table = torch.cat((angles, angles), dim=-1)  # [max_positions, head_dim]
        self.register_buffer("cos", table.cos(), persistent=False)
        self.register_buffer("sin", table.sin(), persistent=False)
        self.fused: FusedOps | None = None
        self._cos_sin: torch.Tensor | None = None
        self._step: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def cos_sin(self) -> torch.Tensor:
        """[max_positions, head_dim]: cos of each frequency, then sin (the fused kernel's table)."""
        if self._cos_sin is None:
            half = self.cos.shape[-1] // 2
            self._cos_sin = torch.cat((self.cos[:, :half], self.sin[:, :half]), dim=-1).contiguous()
        return self._cos_sin

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, H, D], k [T, KVH, D] rotated by each token's position."""
        if self.fused is not None:
            return self.fused.rope(q, k, positions, self.cos_sin())
        cos, sin_signed = self._step_tables(positions, q.dtype)
        half = q.shape[-1] // 2
        # rotate_half(x) * sin == roll(x, half) * (-sin | sin): the same products, sign flips being exact
        return (q * cos + q.roll(half, -1) * sin_signed, k * cos + k.roll(half, -1) * sin_signed)

    def _step_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin rows [T, 1, D] of the step's positions, made by its first layer and kept for
        the others (they all see the same positions tensor)."""
        step = self._step
        if step is None or step[0] is not positions or step[1].dtype != dtype:
            half = self.cos.shape[-1] // 2
            cos = self.cos[positions].unsqueeze(1).to(dtype)  # [T, 1, D]
            sin = self.sin[positions].unsqueeze(1).to(dtype)
            sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            step = self._step = (positions, cos, sin_signed)
        return step[1], step[2]


class PagedAttention(nn.Module):
    """Causal attention of a layer's queries over its paged K/V pools, through the bound backend.

    write_kv stores the step's new K/V at the slot mapping; forward attends. They are two calls so
    that each can be timed as its own kernel."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.scale = head_dim ** -0.5
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.backend: AttentionBackend | None = None

    def bind(self, k_cache: torch.Tensor, v_cache: torch.Tensor, backend: AttentionBackend) -> None:
        self.k_cache, self.v_cache, self.backend = k_cache, v_cache, backend

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
        assert self.backend is not None and self.k_cache is not None and self.v_cache is not None, "bind() first"
        self.backend.write_kv(k, v, self.k_cache, self.v_cache, meta)

    def forward(self, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        assert self.backend is not None and self.k_cache is not None and self.v_cache is not None, "bind() first"
        return self.backend.attend(q, self.k_cache, self.v_cache, meta, self.scale)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up as one projection."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up = Linear(hidden_size, 2 * intermediate_size)
        self.down = Linear(intermediate_size, hidden_size)
        # the backend's fused activation (gate | up -> silu(gate) * up), or None
        self.silu_and_mul: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)
        if self.silu_and_mul is not None:
            return self.down(self.silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.shape_q = (config.num_heads, config.head_dim)
        self.shape_kv = (config.num_kv_heads, config.head_dim)
        self.qkv_sizes = (config.q_size, config.kv_size, config.kv_size)
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.qkv = Linear(config.hidden_size, config.q_size + 2 * config.kv_size)
        self.rope = rope
        self.attn = PagedAttention(config.head_dim)
        self.o_proj = Linear(config.q_size, config.hidden_size)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv(self.attn_norm(x)).split(self.qkv_sizes, dim=-1)
        q, k = self.rope(q.unflatten(-1, self.shape_q), k.unflatten(-1, self.shape_kv), ctx.positions)
        self.attn.write_kv(k, v.unflatten(-1, self.shape_kv), ctx.attn)
        x = x + self.o_proj(self.attn(q, ctx.attn).flatten(1))
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(nn.Module):
    """The decoder. forward() returns final-normed hidden states; compute_logits() applies the LM head.

    LlamaModel(config) has uninitialized projection weights; build real ones with from_state_dict
    (kvscope.engine.model.loader does)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embedding(config.vocab_size, config.hidden_size)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta, config.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(config, self.rope) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_embeddings else Linear(config.hidden_size, config.vocab_size)
        self.matmul: Matmul = F.linear  # the LM head's product (tied or not), the backend's once bound

    @classmethod
    def from_state_dict(
        cls, config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
    ) -> LlamaModel:
        """Build the model around given weights (names as in the module docstring), without random init.

        Raises KeyError naming a missing tensor, ValueError for an unexpected one or a wrong shape.
        """
        model = cls(config)
        expected = {name: p.shape for name, p in model.named_parameters()}
        missing = sorted(set(expected) - set(state))
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise KeyError(f"missing tensor {missing[0]}{more}")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise ValueError(f"unexpected tensor {unexpected[0]}")
        for name, shape in expected.items():
            if tuple(state[name].shape) != tuple(shape):
                raise ValueError(f"tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(shape)}")
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
        model.rope.to(device=device, dtype=dtype)
        return model.eval()

    def bind_kv_cache(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], backend: AttentionBackend) -> None:
        """Give each layer its (K, V) pools and the backend; matmuls use the backend's, norms, RoPE and the
        activation its fused kernels."""
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} KV caches (one per layer), got {len(kv_caches)}")
        fused, matmul = backend.fused_ops, backend.linear
        layers = cast(Iterable[DecoderLayer], self.layers)  # the ModuleList holds DecoderLayers only
        for layer, (k_cache, v_cache) in zip(layers, kv_caches):
            layer.attn.bind(k_cache, v_cache, backend)
            layer.attn_norm.fused = layer.mlp_norm.fused = fused
            layer.mlp.silu_and_mul = getattr(fused, "silu_and_mul", None)
            layer.qkv.matmul = layer.o_proj.matmul = layer.mlp.gate_up.matmul = layer.mlp.down.matmul = matmul
        self.final_norm.fused = self.rope.fused = fused
        self.matmul = matmul
        if self.lm_head is not None:
            self.lm_head.matmul = matmul

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext, num_layers: int | None = None) -> torch.Tensor:
        """input_ids [T] for a flat batch of several requests -> final-normed hidden states [T, hidden].
        num_layers: run only the first layers (self-speculative drafting), then the final norm."""
        x = self.embed(input_ids)
        for layer in self.layers[:num_layers]:
            x = layer(x, ctx)
        return self.final_norm(x)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return self.matmul(hidden, weight).float()
