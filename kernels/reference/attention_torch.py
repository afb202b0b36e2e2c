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

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def write_kv_cache_torch(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    all_valid: bool = False,
) -> None:
    """Store new K/V rows into the paged pools at their slots (slots < 0 are skipped; `all_valid`: the caller
    knows there are none)."""
    n_kv, d = k_cache.shape[-2], k_cache.shape[-1]
    flat_k = k_cache.view(-1, n_kv, d)
    flat_v = v_cache.view(-1, n_kv, d)
    if not all_valid:
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


@dataclass(slots=True)
class _Context:
    """Where one request's (or a decode group's) keys live: a slice of the flat pool (its blocks are
    consecutive: read in place, no copy) or block ids to gather."""

    length: int                        # keys to attend to (the longest, for a group)
    first_slot: int = -1               # >= 0: the keys are flat rows first_slot .. first_slot + length
    blocks: torch.Tensor | None = None  # else: [n_blocks] or [B, n_blocks] block ids

    def read(self, cache: torch.Tensor) -> torch.Tensor:
        if self.first_slot >= 0:
            return cache.view(-1, cache.shape[2], cache.shape[3])[self.first_slot:self.first_slot + self.length]
        assert self.blocks is not None  # a context has a first slot or its blocks (every one built here does)
        return _gather_context(cache, self.blocks, self.length)


@dataclass(slots=True)
class _DecodeGroup:
    rows: torch.Tensor | None      # flat query rows of the group; None: every (non-padding) row, in order
    context: _Context
    keep: torch.Tensor | None      # [B, 1, 1, L] float32 key mask (0 or -inf); None when every context is as long


@dataclass(slots=True)
class _Chunk:
    rows: slice                    # the request's query rows
    context: _Context
    mask: torch.Tensor | None      # [q_len, S] float32 (0 or -inf); None: causal over exactly its own keys


@dataclass(slots=True)
class AttentionPlan:
    """What one step's attention reads and where it writes, worked out once from the host-side lengths and
    block tables and reused by every layer (the layers differ only in their pools and queries)."""

    num_tokens: int
    decode: list[_DecodeGroup]
    chunks: list[_Chunk]
    decode_requests: torch.Tensor | None = None  # int32 ids of the decode requests, when another kernel takes them
    chunk_requests: torch.Tensor | None = None   # int32 ids of the several-token requests, likewise


def _context(table: list[int], length: int, block_size: int, device: torch.device) -> _Context:
    n_blocks = (length + block_size - 1) // block_size
    first = table[0]
    if table[:n_blocks] == list(range(first, first + n_blocks)):
        return _Context(length, first_slot=first * block_size)
    return _Context(length, blocks=torch.tensor(table[:n_blocks], dtype=torch.int64, device=device))


def plan_paged_attention(
    block_tables: torch.Tensor,
    query_lens_host: list[int],
    seq_lens_host: list[int],
    block_size: int,
    block_tables_host: list[list[int]] | None = None,
    torch_kernels: bool = True,
) -> AttentionPlan:
    """The step's AttentionPlan (see paged_attention_torch for the arguments). torch_kernels=False: every request
    is left to other kernels (the decode ones' ids in `decode_requests`, those with several query tokens in
    `chunk_requests`), and the plan has no groups or chunks of its own."""
    device = block_tables.device
    qstarts = [0]
    for n in query_lens_host:
        qstarts.append(qstarts[-1] + n)
    if not torch_kernels:
        ids = lambda rows: torch.tensor(rows, dtype=torch.int32, device=device) if rows else None
        return AttentionPlan(qstarts[-1], [], [], ids([i for i, n in enumerate(query_lens_host) if n == 1]),
                             ids([i for i, n in enumerate(query_lens_host) if n > 1]))
    tables = block_tables.tolist() if block_tables_host is None else block_tables_host
    decode_rows = [i for i, n in enumerate(query_lens_host) if n == 1]
    buckets = _length_buckets(decode_rows, seq_lens_host)
    if len(buckets) == 1:
        buckets[0].sort()  # one group: keep the batch's order (then, for a pure decode step, write in place)
    groups = []
    for rows in buckets:
        lens = [seq_lens_host[i] for i in rows]
        max_len = max(lens)
        if len(rows) == 1:
            context = _context(tables[rows[0]], max_len, block_size, device)
        else:
            n_blocks = (max_len + block_size - 1) // block_size
            padded = [tables[i][:n_blocks] + [0] * (n_blocks - min(n_blocks, len(tables[i]))) for i in rows]
            context = _Context(max_len, blocks=torch.tensor(padded, dtype=torch.int64, device=device))
        keep = None
        if min(lens) != max_len:  # an additive mask: SDPA converts a boolean one on every call
            lens_t = torch.tensor(lens, device=device)
            pad = torch.arange(max_len, device=device)[None, :] >= lens_t[:, None]
            keep = torch.zeros(pad.shape, device=device).masked_fill_(pad, float("-inf"))[:, None, None, :]
        tok = [qstarts[i] for i in rows]
        in_place = len(rows) == len(query_lens_host) == qstarts[-1] and tok == list(range(len(tok)))
        groups.append(_DecodeGroup(None if in_place else torch.tensor(tok, device=device), context, keep))
    chunks = []
    for i, q_len in enumerate(query_lens_host):
        if q_len <= 1:
            continue
        s_len = seq_lens_host[i]
        mask = None
        if q_len != s_len:
            q_pos = torch.arange(s_len - q_len, s_len, device=device)
            later = torch.arange(s_len, device=device)[None, :] > q_pos[:, None]  # [q_len, S]
            mask = torch.zeros(later.shape, device=device).masked_fill_(later, float("-inf"))
        chunks.append(_Chunk(slice(qstarts[i], qstarts[i] + q_len), _context(tables[i], s_len, block_size, device),
                             mask))
    return AttentionPlan(qstarts[-1], groups, chunks)


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
    plan: AttentionPlan | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new query tokens over its paged context.

    Decode requests (one query token) are batched, by similar context length, into padded
    scaled_dot_product_attention calls over their pages (read in place when a request's blocks are
    consecutive, else gathered), each query head group against its shared K/V head (no K/V repeat);
    requests with several query tokens (prefill chunks, speculative verification) run one by one, causal.
    `plan`: the step's AttentionPlan (plan_paged_attention), when the caller keeps one for every layer.
    Accumulates in float32; returns q's dtype, shape [num_tokens, n_heads, head_dim].
    """
    num_tokens, n_heads, d = q.shape
    n_kv = k_cache.shape[2]
    group = n_heads // n_kv
    if plan is None:
        if query_lens_host is None:
            starts = query_start_loc.tolist()
            query_lens_host = [starts[i + 1] - starts[i] for i in range(len(starts) - 1)]
        if seq_lens_host is None:
            seq_lens_host = seq_lens.tolist()
        plan = plan_paged_attention(block_tables, query_lens_host, seq_lens_host, k_cache.shape[1])
    n = plan.num_tokens  # rows after it are padding (never attended to, never read)
    if len(plan.decode) == 1 and plan.decode[0].rows is None and num_tokens == n:  # pure decode: no scatter
        g = plan.decode[0]
        return _decode(q, k_cache, v_cache, g.context, g.keep, scale, n_kv, group).to(q.dtype)
    out = torch.empty(num_tokens, n_heads, d, dtype=q.dtype, device=q.device)
    for g in plan.decode:
        rows = slice(0, n) if g.rows is None else g.rows
        out[rows] = _decode(q[rows], k_cache, v_cache, g.context, g.keep, scale, n_kv, group).to(q.dtype)
    for c in plan.chunks:
        keys = c.context.read(k_cache).float()  # [S, n_kv, d]
        vals = c.context.read(v_cache).float()
        # 4-d inputs: torch's CPU flash kernel (3-d ones fall back to the unfused math path)
        oi = F.scaled_dot_product_attention(
            q[c.rows].float().transpose(0, 1)[None], keys.transpose(0, 1)[None], vals.transpose(0, 1)[None],
            attn_mask=c.mask, is_causal=c.mask is None, scale=scale, enable_gqa=group > 1,
        )
        out[c.rows] = oi[0].transpose(0, 1).to(q.dtype)
    return out


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, context: _Context,
            keep: torch.Tensor | None, scale: float, n_kv: int, group: int) -> torch.Tensor:
    """q [B, H, d] (one query each) -> [B, H, d] in float32; the `group` query heads of a K/V head attend as
    one block of `group` rows, so K/V are never repeated."""
    batch, d = q.shape[0], q.shape[2]
    keys = context.read(k_cache).float()  # [L, n_kv, d] or [B, L, n_kv, d]
    vals = context.read(v_cache).float()
    if keys.dim() == 3:
        keys, vals = keys[None], vals[None]
    qg = q.float().view(batch, n_kv, group, d)
    od = F.scaled_dot_product_attention(qg, keys.transpose(1, 2), vals.transpose(1, 2), attn_mask=keep, scale=scale)
    return od.view(batch, n_kv * group, d)
