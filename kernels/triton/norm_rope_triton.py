"""Triton RMSNorm (optionally fused with the residual add) and RoPE for q and k in one launch.

Same semantics and layouts as kvscope.kernels.reference.norm_rope_torch (the reference).
Both ops are memory bound; fusing saves round trips through memory:
- add_rms_norm_triton reads x and residual once, writes the new residual and the
  normalised row (the unfused version reads the sum back a second time);
- apply_rope_triton rotates every q and k head of a token in one program, loading
  that token's cos/sin row once (one launch instead of elementwise ops per tensor).
One program per token row; reductions and rotations are done in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_res, stride_out, stride_res_out,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + offs, mask=mask, other=0.0)
        summed = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_out_ptr + row * stride_res_out + offs, summed, mask=mask)
        x = summed
    h = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, (h * inv * w).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = x.shape[-1]
    x2 = _rows(x)
    out = torch.empty_like(x2)
    res2 = _rows(residual) if residual is not None else x2
    res_out = torch.empty_like(x2) if residual is not None else out
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, res2, weight, out, res_out,
            x2.stride(0), res2.stride(0), out.stride(0), res_out.stride(0),
            hidden, float(eps),
            HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(hidden),
            num_warps=4 if hidden <= 4096 else 8,
        )
    return out.view(x.shape), (res_out.view(x.shape) if residual is not None else None)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim; returns x's dtype."""
    return _launch_norm(x, None, weight, eps)[0]


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass over memory."""
    out, summed = _launch_norm(x, residual, weight, eps)
    assert summed is not None
    return out, summed


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cache_ptr,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head,
    stride_qo_tok, stride_qo_head, stride_ko_tok, stride_ko_head, stride_cache,
    N_Q: tl.constexpr, N_K: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    offs = tl.arange(0, BLOCK_HALF)
    c_mask = offs < HALF
    cos = tl.load(cache_ptr + pos * stride_cache + offs, mask=c_mask, other=0.0)[None, :]
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs, mask=c_mask, other=0.0)[None, :]

    hq = tl.arange(0, BLOCK_HQ)
    mq = (hq[:, None] < N_Q) & c_mask[None, :]
    src = q_ptr + tok * stride_q_tok + hq[:, None] * stride_q_head + offs[None, :]
    x1 = tl.load(src, mask=mq, other=0.0)
    x2 = tl.load(src + HALF, mask=mq, other=0.0).to(tl.float32)
    dst = q_out_ptr + tok * stride_qo_tok + hq[:, None] * stride_qo_head + offs[None, :]
    out_ty = q_out_ptr.dtype.element_ty
    tl.store(dst, (x1.to(tl.float32) * cos - x2 * sin).to(out_ty), mask=mq)
    tl.store(dst + HALF, (x2 * cos + x1.to(tl.float32) * sin).to(out_ty), mask=mq)

    hk = tl.arange(0, BLOCK_HK)
    mk = (hk[:, None] < N_K) & c_mask[None, :]
    src = k_ptr + tok * stride_k_tok + hk[:, None] * stride_k_head + offs[None, :]
    y1 = tl.load(src, mask=mk, other=0.0)
    y2 = tl.load(src + HALF, mask=mk, other=0.0).to(tl.float32)
    dst = k_out_ptr + tok * stride_ko_tok + hk[:, None] * stride_ko_head + offs[None, :]
    out_ty = k_out_ptr.dtype.element_ty
    tl.store(dst, (y1.to(tl.float32) * cos - y2 * sin).to(out_ty), mask=mk)
    tl.store(dst + HALF, (y2 * cos + y1.to(tl.float32) * sin).to(out_ty), mask=mk)


def apply_rope_triton(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H, D] and k [T, KVH, D] by their positions (neox layout) in one launch.

    inplace=True writes into q and k (they must have a contiguous last dim) and returns them.
    """
    num_tokens, n_q, head_dim = q.shape
    n_k = k.shape[1]
    if head_dim % 2 or k.shape[2] != head_dim or cos_sin_cache.shape[-1] != head_dim:
        raise ValueError("q, k and cos_sin_cache must share one even head_dim")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        if inplace:
            raise ValueError("in-place RoPE needs a contiguous last dim")
        q, k = q.contiguous(), k.contiguous()
    q_out = q if inplace else torch.empty_like(q)
    k_out = k if inplace else torch.empty_like(k)
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    half = head_dim // 2
    if num_tokens:
        _rope_kernel[(num_tokens,)](
            q, k, q_out, k_out, positions, cache,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), cache.stride(0),
            N_Q=n_q, N_K=n_k, HALF=half,
            BLOCK_HQ=triton.next_power_of_2(n_q), BLOCK_HK=triton.next_power_of_2(n_k),
            BLOCK_HALF=triton.next_power_of_2(half),
        )
    return q_out, k_out
