"""Torch reference for RMSNorm (optionally fused with the residual add) and rotary embeddings.

The ground truth for kvscope.kernels.triton.norm_rope_triton and a backend on its own.
RoPE uses the neox / Hugging Face Llama "rotate_half" layout: a head vector is
split into halves (x1, x2) and rotated as (x1*cos - x2*sin, x2*cos + x1*sin),
with frequency i = theta ** (-2i / head_dim) for the pair (i, i + head_dim/2).

Layouts: x, residual [num_tokens, hidden]; q [T, n_heads, D]; k [T, n_kv_heads, D];
positions [T] int; cos_sin_cache [max_positions, D] float32 (cos in the first
D/2 columns, sin in the last D/2).
"""

from __future__ import annotations

import torch


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim, in float32; returns x's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (h * weight.float()).to(x.dtype)


def add_rms_norm_torch(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm residual stream of a Llama layer.

    The sum is rounded to x's dtype before it is normalised, as the unfused model does.
    """
    summed = (x.float() + residual.float()).to(x.dtype)
    return rms_norm_torch(summed, weight, eps), summed


def rope_cos_sin_cache(
    max_positions: int, head_dim: int, theta: float = 10000.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """[max_positions, head_dim] float32: cos(pos * f_i) then sin(pos * f_i), i < head_dim / 2."""
    if head_dim % 2:
        raise ValueError(f"rotary head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    angles = torch.arange(max_positions, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def apply_rope_torch(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H, D] and k [T, KVH, D] by their token positions; returns new tensors."""
    half = q.shape[-1] // 2
    cs = cos_sin_cache[positions.long()]  # [T, D]
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    return _rotate(q, cos, sin), _rotate(k, cos, sin)
