"""A Llama-family decoder over a flat, unpadded token batch with a paged KV cache.

RMSNorm, rotary embeddings (Hugging Face rotate-half layout, the model's theta), grouped-query
attention through an AttentionBackend (kvscope.engine.attention), SwiGLU MLP, tied or untied
embeddings. Q/K/V are one fused projection, gate/up another. Parameter names (what loaders fill):

    embed.weight                      [vocab, hidden]
    layers.{i}.attn_norm.weight       [hidden]
    layers.{i}.qkv.weight             [(heads + 2 * kv_heads) * head_dim, hidden]   rows: q, k, v
    layers.{i}.o_proj.weight          [hidden, heads * head_dim]
    layers.{i}.mlp_norm.weight        [hidden]
    layers.{i}.gate_up.weight         [2 * intermediate, hidden]                    rows: gate, up
    layers.{i}.down.weight            [hidden, intermediate]
    final_norm.weight                 [hidden]
    lm_head.weight                    [vocab, hidden]   (only when embeddings are untied)

Timer protocol (kernel events): `timer.begin(op, layer)` / `timer.end()` around each op; None = off.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kvscope.engine.attention import AttentionBackend, AttentionMetadata
from kvscope.engine.model_config import ModelConfig

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


class OpTimer(Protocol):
    def begin(self, op: str, layer: int) -> None: ...

    def end(self) -> None: ...


class Linear(nn.Module):
    """y = x @ weight.T without bias. Weights start uninitialized (torch.empty): loaders fill them."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class Embedding(nn.Module):
    """Token id -> row of weight. Uninitialized like Linear."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 like Hugging Face's LlamaRMSNorm."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, ops: Any = None) -> torch.Tensor:
        if ops is not None:
            return ops.rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position up to max_positions; applied by indexing with positions."""

    def __init__(self, head_dim: int, theta: float, max_positions: int) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.int64).float(), inv_freq)
        table = torch.cat((angles, angles), dim=-1)  # [max_positions, head_dim]
        self.register_buffer("cos", table.cos(), persistent=False)
        self.register_buffer("sin", table.sin(), persistent=False)

    def cos_sin(self) -> torch.Tensor:
        """[max_positions, head_dim]: cos of each frequency, then sin (the fused kernel's table)."""
        half = self.cos.shape[-1] // 2
        if getattr(self, "_cos_sin", None) is None:
            self._cos_sin = torch.cat((self.cos[:, :half], self.sin[:, :half]), dim=-1).contiguous()
        return self._cos_sin

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                ops: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, H, D], k [T, KVH, D] rotated by each token's position."""
        if ops is not None:
            return ops.rope(q, k, positions, self.cos_sin())
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)  # [T, 1, D]
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.q_size
        self.kv_size = config.kv_size
        self.intermediate_size = config.intermediate_size
        self.scale = config.head_dim ** -0.5
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.qkv = Linear(config.hidden_size, config.q_size + 2 * config.kv_size)
        self.o_proj = Linear(config.q_size, config.hidden_size)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gate_up = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down = Linear(config.intermediate_size, config.hidden_size)

    def forward(
        self,
        layer_idx: int,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        backend: AttentionBackend,
        timer: OpTimer | None,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        k_cache, v_cache = kv_cache
        ops = backend.fused_ops  # fused norm / RoPE kernels of the backend, or None for plain torch

        if timer is not None:
            timer.begin("attn_norm", layer_idx)
        h = self.attn_norm(x, ops)
        if timer is not None:
            timer.end()
            timer.begin("qkv", layer_idx)
        qkv = self.qkv(h)
        if timer is not None:
            timer.end()
            timer.begin("rope", layer_idx)
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = rope(q, k, positions, ops)
        if timer is not None:
            timer.end()
            timer.begin("kv_write", layer_idx)
        backend.write_kv(k, v, k_cache, v_cache, meta)
        if timer is not None:
            timer.end()
            timer.begin("attention", layer_idx)
        attn = backend.attend(q, k_cache, v_cache, meta, self.scale)
        if timer is not None:
            timer.end()
            timer.begin("o_proj", layer_idx)
        x = x + self.o_proj(attn.reshape(num_tokens, self.q_size))
        if timer is not None:
            timer.end()
            timer.begin("mlp_norm", layer_idx)
        h = self.mlp_norm(x, ops)
        if timer is not None:
            timer.end()
            timer.begin("mlp", layer_idx)
        gate, up = self.gate_up(h).split(self.intermediate_size, dim=-1)
        x = x + self.down(F.silu(gate) * up)
        if timer is not None:
            timer.end()
        return x


class LlamaModel(nn.Module):
    """The decoder. forward() returns final-normed hidden states; compute_logits() applies the LM head.

    LlamaModel(config) has uninitialized projection weights; build real ones with from_state_dict
    (kvscope.engine.loader does)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embedding(config.vocab_size, config.hidden_size)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta, config.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_embeddings else Linear(config.hidden_size, config.vocab_size)

    @classmethod
    def from_state_dict(
        cls, config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
    ) -> "LlamaModel":
        """Build the model around given weights (names as in the module docstring), without random init.

        Raises KeyError naming a missing tensor, ValueError for an unexpected one or a wrong shape.
        """
        model = cls(config)
        expected = {name: p.shape for name, p in model.named_parameters()}
        missing = sorted(set(expected) - set(state))
        if missing:
            raise KeyError(f"missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise ValueError(f"unexpected tensor {unexpected[0]}")
        for name, shape in expected.items():
            if tuple(state[name].shape) != tuple(shape):
                raise ValueError(f"tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(shape)}")
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
        model.rope.to(device=device, dtype=dtype)
        return model.eval()

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: KVCaches,
        meta: AttentionMetadata,
        backend: AttentionBackend,
        timer: OpTimer | None = None,
    ) -> torch.Tensor:
        """input_ids, positions: [T] for a flat batch of several requests -> hidden [T, hidden]."""
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} KV caches (one per layer), got {len(kv_caches)}")
        if timer is not None:
            timer.begin("embed", -1)
        x = self.embed(input_ids)
        if timer is not None:
            timer.end()
        for layer_idx, layer in enumerate(self.layers):
            x = layer(layer_idx, x, positions, self.rope, kv_caches[layer_idx], meta, backend, timer)
        if timer is not None:
            timer.begin("final_norm", -1)
        x = self.final_norm(x, backend.fused_ops)
        if timer is not None:
            timer.end()
        return x

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor, timer: OpTimer | None = None) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        if timer is not None:
            timer.begin("lm_head", -1)
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight).float()
        if timer is not None:
            timer.end()
        return logits
