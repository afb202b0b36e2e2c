"""Torch reference kernels for paged attention: KV-cache write and varlen paged attention.

These are the ground truth the Triton kernels are tested against, and the
default backend on CPU. Pure functions over tensors.

Layouts (one layer):
    k_cache, v_cache: [num_blocks, block_size, n_kv_heads, head_dim]
    q:                [num_tokens, n_heads, head_dim]   (flat, unpadded batch)
    k, v (new):       [num_tokens, n_kv_heads, head_dim]
    slot_mapping:     [num_tokens] int64, physical slot = block * block_size + offset; -1 = skip
    block_tables:     [num_seqs, max_blocks] int32 (rows padded with any valid id)
    query_start_loc:  [num_seqs + 1] int32, cumulative query lengths
    seq_lens:         [num_seqs] int32, context length of each request *including* its new tokens

Query token i of a request with q_len new tokens and seq_len total sits at
position seq_len - q_len + i and attends causally to keys 0 .. that position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache_torch(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store new K/V rows into the paged pools at their slots (slots < 0 are skipped)."""
    n_kv, d = k_cache.shape[-2], k_cache.shape[-1]
    flat_k = k_cache.view(-1, n_kv, d)
    flat_v = v_cache.view(-1, n_kv, d)
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        slot_mapping, k, v = slot_mapping[valid], k[valid], v[valid]
    flat_k.index_copy_(0, slot_mapping, k.to(flat_k.dtype))
    flat_v.index_copy_(0, slot_mapping, v.to(flat_v.dtype))


def _gather_context(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """[..., length, n_kv, d]: the rows of one ([n]) or several ([B, n]) block tables, cut to length."""
    bs, n_kv, d = cache.shape[1], cache.shape[2], cache.shape[3]
    n_blocks = (length + bs - 1) // bs
    ids = table[..., :n_blocks]
    rows = cache.index_select(0, ids.reshape(-1).long())  # one contiguous copy of the pages
    rows = rows.view(*ids.shape[:-1], n_blocks * bs, n_kv, d)
    return rows[..., :length, :, :]


def _length_buckets(rows: list[int], lens: list[int], ratio: float = 1.5) -> list[list[int]]:
    """Decode rows grouped by context length (each group's longest within `ratio` of its shortest),
    so one padded batch per group gathers far fewer empty slots than one batch padded to the longest."""
    groups: list[list[int]] = []
    for i in sorted(rows, key=lens.__getitem__):
        if groups and lens[i] <= ratio * lens[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def paged_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    query_lens_host: list[int] | None = None,
    seq_lens_host: list[int] | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new query tokens over its paged context.

    Decode requests (one query token) are batched, by similar context length, into padded
    scaled_dot_product_attention calls over their gathered pages; requests
    with several query tokens (prefill chunks, speculative verification) run one by one.
    Accumulates in float32; returns q's dtype, shape [num_tokens, n_heads, head_dim].
    """
    num_tokens, n_heads, d = q.shape
    n_kv = k_cache.shape[2]
    group = n_heads // n_kv
    if query_lens_host is None:
        starts = query_start_loc.tolist()
        query_lens_host = [starts[i + 1] - starts[i] for i in range(len(starts) - 1)]
    if seq_lens_host is None:
        seq_lens_host = seq_lens.tolist()
    out = torch.empty(num_tokens, n_heads, d, dtype=q.dtype, device=q.device)
    qstarts = [0]
    for n in query_lens_host:
        qstarts.append(qstarts[-1] + n)

    decode_rows = [i for i, n in enumerate(query_lens_host) if n == 1]
    for rows in _length_buckets(decode_rows, seq_lens_host):
        idx = torch.tensor(rows, device=q.device)
        tok = torch.tensor([qstarts[i] for i in rows], device=q.device)
        max_len = max(seq_lens_host[i] for i in rows)
        keys = _gather_context(k_cache, block_tables[idx], max_len).float()  # [B, L, n_kv, d]
        vals = _gather_context(v_cache, block_tables[idx], max_len).float()
        qd = q[tok].float().unsqueeze(2)  # [B, H, 1, d]
        lens = torch.tensor([seq_lens_host[i] for i in rows], device=q.device)
        keep = torch.arange(max_len, device=q.device)[None, :] < lens[:, None]  # [B, L]
        od = F.scaled_dot_product_attention(
            qd, keys.transpose(1, 2), vals.transpose(1, 2),
            attn_mask=keep[:, None, None, :], scale=scale, enable_gqa=group > 1,
        )
        out[tok] = od.squeeze(2).to(q.dtype)

    for i, q_len in enumerate(query_lens_host):
        if q_len == 1 or q_len == 0:
            continue
        s_len = seq_lens_host[i]
        keys = _gather_context(k_cache, block_tables[i], s_len).float()  # [S, n_kv, d]
        vals = _gather_context(v_cache, block_tables[i], s_len).float()
        qi = q[qstarts[i] : qstarts[i] + q_len].float()
        q_pos = torch.arange(s_len - q_len, s_len, device=q.device)
        k_pos = torch.arange(s_len, device=q.device)
        mask = k_pos[None, :] <= q_pos[:, None]  # [q_len, S]
        oi = F.scaled_dot_product_attention(
            qi.transpose(0, 1),
            keys.transpose(0, 1),
            vals.transpose(0, 1),
            attn_mask=mask,
            scale=scale,
            enable_gqa=group > 1,
        )
        out[qstarts[i] : qstarts[i] + q_len] = oi.transpose(0, 1).to(q.dtype)
    return out
