"""Triton paged-attention kernels: KV-cache write, split-KV decode (+ reduction) and varlen prefill.

Pure functions over tensors with the same layouts and semantics as the torch
reference in kvscope.kernels.reference.attention_torch (read its docstring first):

    k_cache, v_cache  [num_blocks, block_size, n_kv_heads, head_dim]
    q                 [num_tokens, n_heads, head_dim]  (flat, unpadded batch)
    block_tables      [num_seqs, max_blocks] int32
    query_start_loc   [num_seqs + 1] int32
    seq_lens          [num_seqs] int32 (context length including the new tokens)

`paged_attention_triton` sends a batch whose requests all have one query token
(max_query_len == 1) to the split-KV decode kernel (flash-decoding) and any
other batch (prefill chunks mixed with decodes) to the varlen prefill kernel.
Both kernels handle all query heads that share a KV head in one program, so
QK^T and PV are real matrix products (tl.dot), with the group dimension padded
by masks to the 16 rows tl.dot needs. Keys are walked in tiles of BLOCK_N
token positions; each position is translated to a physical slot through the
block table, so any block size (1 included) works with the same tiles.

Grid sizes come from host ints (max_query_len / max_seq_len); nothing here
reads device tensors back to the host. Under TRITON_INTERPRET=1 all
arithmetic is done in float32 (the interpreter's bf16/fp16 dot is not exact);
on a GPU the dot inputs stay in the cache dtype with float32 accumulation.
See docs/kernels.md for the grid, tiling and split heuristics.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2_at_least(n: int, floor: int) -> int:
    return max(floor, triton.next_power_of_2(int(n)))


@functools.lru_cache(maxsize=8)
def _multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs must not silently drop to tf32; half types use tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------- KV write


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
    stride_kc_slot, stride_kc_head, stride_vc_slot, stride_vc_head,
    N_KV: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < N_KV) & (offs_d[None, :] < HEAD_DIM)
    tok64 = tok.to(tl.int64)
    k = tl.load(k_ptr + tok64 * stride_k_tok + offs_h[:, None] * stride_k_head + offs_d[None, :],
                mask=mask)
    v = tl.load(v_ptr + tok64 * stride_v_tok + offs_h[:, None] * stride_v_head + offs_d[None, :],
                mask=mask)
    tl.store(k_cache_ptr + slot * stride_kc_slot + offs_h[:, None] * stride_kc_head + offs_d[None, :],
             k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + slot * stride_vc_slot + offs_h[:, None] * stride_vc_head + offs_d[None, :],
             v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache_triton(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store new K/V rows [T, n_kv, D] into the paged pools at their slots (slots < 0 are skipped)."""
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    n_kv, head_dim = k_cache.shape[2:]
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    kc = k_cache.view(-1, n_kv, head_dim)
    vc = v_cache.view(-1, n_kv, head_dim)
    _write_kv_kernel[(num_tokens,)](
        k, v, kc, vc, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
        N_KV=n_kv, HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(n_kv), BLOCK_D=triton.next_power_of_2(head_dim),
    )


# --------------------------------------------------------------------------- shared tile step


@triton.jit
def _attend_tile(
    q, acc, m_i, l_i, start_n, bt_row_ptr, k_cache_ptr, v_cache_ptr,
    kv_head, q_pos, kv_limit, offs_d, d_mask,
    stride_c_block, stride_c_slot, stride_c_head,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step over key positions [start_n, start_n + BLOCK_N).

    q is pre-scaled by scale * log2(e); scores are in the log2 domain.
    kv_limit: keys at positions >= kv_limit are masked; q_pos (rows) is the causal limit when CAUSAL.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < kv_limit
    block_idx = tl.load(bt_row_ptr + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
    row = block_idx * stride_c_block + (offs_n % BLOCK_SIZE) * stride_c_slot + kv_head * stride_c_head
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [M, BLOCK_N] fp32
    if CAUSAL:
        valid = n_mask[None, :] & (offs_n[None, :] <= q_pos[:, None])
    else:
        valid = n_mask[None, :] & (q_pos[:, None] >= 0)
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # rows with nothing valid yet keep m = -inf; shift by 0 there so exp2 stays finite
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


# --------------------------------------------------------------------------- decode (split-KV)


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, qsl_ptr, seq_lens_ptr,
    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr,
    qk_scale, split_len,
    stride_q_tok, stride_q_head,
    stride_c_block, stride_c_slot, stride_c_head,
    stride_bt_seq,
    stride_o_tok, stride_o_head,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, N_HEADS: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """grid (num_seqs, n_kv_heads, NUM_SPLITS): one query token, GROUP heads, one key range."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    tok = tl.load(qsl_ptr + seq)
    if tl.load(qsl_ptr + seq + 1) == tok:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start = split * split_len
    kv_end = tl.minimum(kv_start + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    tok64 = tok.to(tl.int64)
    q = tl.load(q_ptr + tok64 * stride_q_tok + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    q = (q.to(tl.float32) * qk_scale)
    if not UPCAST:
        q = q.to(k_cache_ptr.dtype.element_ty)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    row_pos = tl.where(g_mask, 0, -1)  # padded group rows are masked out entirely
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt_seq
    for start_n in range(kv_start, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, start_n, bt_row, k_cache_ptr, v_cache_ptr,
            kv_head, row_pos, kv_end, offs_d, d_mask,
            stride_c_block, stride_c_slot, stride_c_head,
            BLOCK_SIZE, BLOCK_N, False, UPCAST, DOT_PRECISION,
        )

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + tok64 * stride_o_tok + heads[:, None] * stride_o_head + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        # partials laid out [num_seqs, N_HEADS, NUM_SPLITS] (+ [BLOCK_D] for acc)
        part = (seq.to(tl.int64) * N_HEADS + heads) * NUM_SPLITS + split
        tl.store(part_m_ptr + part, m_i, mask=g_mask)
        tl.store(part_l_ptr + part, l_i, mask=g_mask)
        tl.store(part_acc_ptr + part[:, None] * BLOCK_D + offs_d[None, :], acc, mask=g_mask[:, None])


@triton.jit
def _decode_reduce_kernel(
    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, qsl_ptr,
    stride_o_tok, stride_o_head,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, N_HEADS: tl.constexpr,
):
    """grid (num_seqs, n_heads): merge the NUM_SPLITS partial softmax states of one head."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tok = tl.load(qsl_ptr + seq)
    if tl.load(qsl_ptr + seq + 1) == tok:
        return
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    base = (seq.to(tl.int64) * N_HEADS + head) * NUM_SPLITS
    m = tl.load(part_m_ptr + base + offs_s)
    sums = tl.load(part_l_ptr + base + offs_s)
    acc = tl.load(part_acc_ptr + (base + offs_s)[:, None] * BLOCK_D + offs_d[None, :])
    m_max = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.math.exp2(m - m_max))
    denom = tl.sum(sums * w, axis=0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(denom == 0.0, 1.0, denom)
    tl.store(out_ptr + tok.to(tl.int64) * stride_o_tok + head * stride_o_head + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def choose_num_splits(num_seqs: int, n_kv_heads: int, max_seq_len: int, device: torch.device,
                      block_n: int) -> int:
    """Split the key range so that about 4 programs per SM exist, keeping >= 4 tiles per split.

    A power of two (the reduce kernel loads all splits with one tl.arange).
    """
    if device.type == "cuda":
        target = 4 * _multiprocessor_count(device.index if device.index is not None else 0)
    else:
        target = 4
    programs = max(1, num_seqs * n_kv_heads)
    wanted = max(1, -(-target // programs))
    max_useful = max(1, max_seq_len // (4 * block_n))
    splits = min(wanted, max_useful, 64)
    return 1 << (splits.bit_length() - 1)  # round down to a power of two


# --------------------------------------------------------------------------- varlen prefill


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, qsl_ptr, seq_lens_ptr, out_ptr,
    qk_scale,
    stride_q_tok, stride_q_head,
    stride_c_block, stride_c_slot, stride_c_head,
    stride_bt_seq,
    stride_o_tok, stride_o_head,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """grid (query tiles, num_seqs, n_kv_heads).

    A program owns BLOCK_Q query tokens of one request times the GROUP heads of one KV
    head, flattened into BLOCK_M = BLOCK_Q * GROUP (padded) rows: row r is token r // GROUP,
    head r % GROUP. It walks the request's keys up to its last query position, causally.
    """
    q_tile = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    tile_start = q_tile * BLOCK_Q
    if tile_start >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q_idx = tile_start + offs_m // GROUP
    row_mask = (offs_m // GROUP < BLOCK_Q) & (q_idx < q_len)
    heads = kv_head * GROUP + offs_m % GROUP
    tok = (q_start + q_idx).to(tl.int64)
    io_mask = row_mask[:, None] & d_mask[None, :]
    q = tl.load(q_ptr + tok[:, None] * stride_q_tok + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=io_mask, other=0.0)
    q = q.to(tl.float32) * qk_scale
    if not UPCAST:
        q = q.to(k_cache_ptr.dtype.element_ty)
    q_pos = tl.where(row_mask, context_len + q_idx, -1)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    last_q = tl.minimum(tile_start + BLOCK_Q, q_len) - 1
    kv_end = context_len + last_q + 1
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt_seq
    for start_n in range(0, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, start_n, bt_row, k_cache_ptr, v_cache_ptr,
            kv_head, q_pos, kv_end, offs_d, d_mask,
            stride_c_block, stride_c_slot, stride_c_head,
            BLOCK_SIZE, BLOCK_N, True, UPCAST, DOT_PRECISION,
        )
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + tok[:, None] * stride_o_tok + heads[:, None] * stride_o_head + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=io_mask)


# --------------------------------------------------------------------------- entry point


def _check_layouts(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have the same shape and strides")
    if q.shape[1] % k_cache.shape[2] != 0:
        raise ValueError(f"n_heads {q.shape[1]} is not a multiple of n_kv_heads {k_cache.shape[2]}")
    if q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"q head_dim {q.shape[2]} != cache head_dim {k_cache.shape[3]}")
    if k_cache.stride(-1) != 1:
        raise ValueError("the KV cache's last dimension must be contiguous")


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new query tokens over its paged context.

    max_query_len / max_seq_len: host ints sizing the grid (read from the tensors when
    None, which syncs). num_splits: force the decode kernel's split count (a power of
    two; None = heuristic). out: optional [T, H, D] buffer to write into.
    Returns [num_tokens, n_heads, head_dim] in q's dtype.
    """
    _check_layouts(q, k_cache, v_cache)
    num_tokens, n_heads, head_dim = q.shape
    num_seqs = seq_lens.shape[0]
    n_kv = k_cache.shape[2]
    block_size = k_cache.shape[1]
    group = n_heads // n_kv
    if out is None:
        out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    if q.stride(-1) != 1:
        q = q.contiguous()
    if block_tables.stride(-1) != 1:
        block_tables = block_tables.contiguous()
    query_start_loc, seq_lens = query_start_loc.contiguous(), seq_lens.contiguous()

    upcast = _interpreted() or k_cache.dtype == torch.float32
    precision = _dot_precision(k_cache.dtype)
    qk_scale = float(scale) * LOG2E
    block_d = _pow2_at_least(head_dim, 16)
    common = {
        "stride_c_block": k_cache.stride(0), "stride_c_slot": k_cache.stride(1), "stride_c_head": k_cache.stride(2),
        "stride_bt_seq": block_tables.stride(0),
        "stride_o_tok": out.stride(0), "stride_o_head": out.stride(1),
        "GROUP": group, "HEAD_DIM": head_dim, "BLOCK_D": block_d, "BLOCK_SIZE": block_size,
        "UPCAST": upcast, "DOT_PRECISION": precision,
    }
    on_gpu = q.device.type == "cuda"
    # two pipeline stages of 16-bit K/V tiles fit any recent GPU's shared memory; fp32 gets one
    stages = 2 if on_gpu and k_cache.element_size() == 2 else 1

    if max_query_len == 1:
        block_n = 64 if on_gpu and head_dim <= 128 else (32 if on_gpu else 16)
        splits = num_splits or choose_num_splits(num_seqs, n_kv, max_seq_len, q.device, block_n)
        if splits & (splits - 1):
            raise ValueError(f"num_splits must be a power of two, got {splits}")
        split_len = triton.cdiv(triton.cdiv(max_seq_len, splits), block_n) * block_n
        if splits > 1:
            part_m = torch.empty(num_seqs, n_heads, splits, dtype=torch.float32, device=q.device)
            part_l = torch.empty_like(part_m)
            part_acc = torch.empty(num_seqs, n_heads, splits, block_d, dtype=torch.float32, device=q.device)
        else:
            part_m = part_l = part_acc = out  # unused
        _decode_split_kernel[(num_seqs, n_kv, splits)](
            q, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
            out, part_acc, part_m, part_l,
            qk_scale, split_len,
            q.stride(0), q.stride(1),
            BLOCK_G=_pow2_at_least(group, 16), BLOCK_N=block_n,
            NUM_SPLITS=splits, N_HEADS=n_heads,
            num_warps=4, num_stages=stages,
            **common,
        )
        if splits > 1:
            _decode_reduce_kernel[(num_seqs, n_heads)](
                out, part_acc, part_m, part_l, query_start_loc,
                out.stride(0), out.stride(1),
                HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=splits, N_HEADS=n_heads,
                num_warps=4,
            )
        return out

    block_m = 64 if on_gpu else 16
    block_m = max(block_m, _pow2_at_least(group, 16))
    block_q = block_m // group
    block_n = 64 if on_gpu else 16
    grid = (triton.cdiv(max_query_len, block_q), num_seqs, n_kv)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        qk_scale,
        q.stride(0), q.stride(1),
        BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=block_n,
        num_warps=4, num_stages=stages,
        **common,
    )
    return out


def attention_flops_and_bytes(query_lens: list[int], seq_lens: list[int], n_heads: int, n_kv_heads: int,
                              head_dim: int, elem_bytes: int) -> tuple[int, int]:
    """Useful FLOPs (QK^T + PV, causal) and minimum bytes moved (Q, K/V read once, output) of one call."""
    flops = 0
    kv_rows = 0
    for q_len, s_len in zip(query_lens, seq_lens):
        ctx = s_len - q_len
        attended = q_len * ctx + q_len * (q_len + 1) // 2
        flops += 4 * attended * n_heads * head_dim
        kv_rows += s_len
    q_tokens = sum(query_lens)
    bytes_moved = elem_bytes * head_dim * (2 * kv_rows * n_kv_heads + 2 * q_tokens * n_heads)
    return flops, bytes_moved


__all__ = [
    "attention_flops_and_bytes",
    "choose_num_splits",
    "paged_attention_triton",
    "write_kv_cache_triton",
]
