"""Triton kernels against independent oracles, on CPU through the Triton interpreter.

Paged attention is checked against dense float64 attention computed from the
unpaged K/V (and against the torch reference backend); the KV write against
write_kv_cache_torch; RMSNorm / RoPE against Hugging Face Llama's own modules
and the torch reference. Outputs and unused cache slots are poisoned with NaN
so anything unwritten, or read outside its mask, fails.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvscope.kernels.reference.attention_torch import paged_attention_torch, write_kv_cache_torch
from kvscope.kernels.reference.norm_rope_torch import (
    add_rms_norm_torch,
    apply_rope_torch,
    rms_norm_torch,
    rope_cos_sin_cache,
)
from kvscope.kernels.triton.attention_triton import (
    choose_num_splits,
    paged_attention_triton,
    write_kv_cache_triton,
)
from kvscope.kernels.triton.norm_rope_triton import add_rms_norm_triton, apply_rope_triton, rms_norm_triton
from support.paths import BENCHMARKS

TOL = {torch.float32: {"rtol": 2e-5, "atol": 2e-5}, torch.float16: {"rtol": 2e-3, "atol": 2e-3}}


class PagedBatch:
    """Random per-request K/V scattered into a NaN-poisoned paged pool through shuffled block tables."""

    def __init__(self, q_lens, seq_lens, block_size, n_kv, group, head_dim, dtype, seed):
        g = torch.Generator().manual_seed(seed)
        self.q_lens, self.seq_lens = list(q_lens), list(seq_lens)
        n_heads = n_kv * group
        blocks_per = [math.ceil(s / block_size) for s in seq_lens]
        num_blocks = sum(blocks_per) + 3  # spare blocks stay poisoned
        self.k_cache = torch.full((num_blocks, block_size, n_kv, head_dim), float("nan"), dtype=dtype)
        self.v_cache = torch.full_like(self.k_cache, float("nan"))
        perm = torch.randperm(num_blocks, generator=g)
        width = max(blocks_per) + 1  # at least one padding column in every row
        self.block_tables = perm[torch.randint(0, num_blocks, (len(seq_lens), width), generator=g)].int()
        self.keys, self.values = [], []
        used = 0
        for i, s in enumerate(seq_lens):
            self.block_tables[i, : blocks_per[i]] = perm[used : used + blocks_per[i]]
            used += blocks_per[i]
            k = torch.randn(s, n_kv, head_dim, generator=g).to(dtype)
            v = torch.randn(s, n_kv, head_dim, generator=g).to(dtype)
            slots = self.slots(i, range(s))
            self.k_cache.view(-1, n_kv, head_dim)[slots] = k
            self.v_cache.view(-1, n_kv, head_dim)[slots] = v
            self.keys.append(k)
            self.values.append(v)
        self.q = torch.randn(sum(q_lens), n_heads, head_dim, generator=g).to(dtype)
        starts = [0]
        for n in q_lens:
            starts.append(starts[-1] + n)
        self.starts = starts
        self.query_start_loc = torch.tensor(starts, dtype=torch.int32)
        self.seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
        self.scale = head_dim**-0.5

    def slots(self, i, positions):
        bs = self.k_cache.shape[1]
        return torch.tensor([int(self.block_tables[i, p // bs]) * bs + p % bs for p in positions], dtype=torch.long)

    def dense_oracle(self) -> torch.Tensor:
        """float64 causal attention over each request's unpaged K/V."""
        n_heads = self.q.shape[1]
        out = torch.empty(self.q.shape, dtype=torch.float64)
        for i, (q_len, s_len) in enumerate(zip(self.q_lens, self.seq_lens)):
            if q_len == 0:
                continue
            qi = self.q[self.starts[i] : self.starts[i + 1]].double()  # [q, H, D]
            group = n_heads // self.keys[i].shape[1]
            k = self.keys[i].double().repeat_interleave(group, dim=1)  # [S, H, D]
            v = self.values[i].double().repeat_interleave(group, dim=1)
            scores = torch.einsum("qhd,shd->hqs", qi, k) * self.scale
            q_pos = torch.arange(s_len - q_len, s_len)[:, None]
            scores = scores.masked_fill(torch.arange(s_len)[None, :] > q_pos, float("-inf"))
            out[self.starts[i] : self.starts[i + 1]] = torch.einsum("hqs,shd->qhd", scores.softmax(-1), v)
        return out

    def run_triton(self, **kw) -> torch.Tensor:
        out = torch.full_like(self.q, float("nan"))
        got = paged_attention_triton(
            self.q, self.k_cache, self.v_cache, self.block_tables, self.query_start_loc, self.seq_lens_t,
            self.scale, max_query_len=max(self.q_lens), max_seq_len=max(self.seq_lens), out=out, **kw,
        )
        assert got.data_ptr() == out.data_ptr()
        return got


def assert_close_to_oracle(got: torch.Tensor, batch: PagedBatch, dtype) -> None:
    assert got.dtype == dtype and got.shape == batch.q.shape
    assert not torch.isnan(got).any(), "unwritten or NaN-contaminated output elements"
    torch.testing.assert_close(got.double(), batch.dense_oracle(), **TOL[dtype])


DTYPES = [torch.float32, torch.float16]
BLOCK_SIZES = [1, 16, 32]
GROUPS = [1, 3, 8]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_decode_matches_dense_oracle(block_size, group, dtype):
    # context lengths: 1, an exact multiple of the block size, and others that are not
    seq_lens = [1, 2 * block_size, 37, block_size + 1]
    batch = PagedBatch([1] * 4, seq_lens, block_size, 2, group, 16, dtype, seed=block_size * 31 + group)
    assert_close_to_oracle(batch.run_triton(), batch, dtype)


@pytest.mark.parametrize("num_splits", [2, 4, 8])
@pytest.mark.parametrize("group", GROUPS)
def test_decode_split_kv_reduction(num_splits, group):
    # splits that end up empty for the short requests, and split edges inside blocks
    batch = PagedBatch([1, 1, 1], [1, 50, 130], 16, 1, group, 16, torch.float32, seed=7 * num_splits + group)
    assert_close_to_oracle(batch.run_triton(num_splits=num_splits), batch, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_mixed_decode_and_prefill_chunks_match_dense_oracle(block_size, group, dtype):
    # a fresh prompt, a chunk after cached context, decodes, and a one-token prompt
    q_lens = [19, 1, 7, 1, 1]
    seq_lens = [19, block_size * 2, 7 + 2 * block_size + 3, 1, 40]
    batch = PagedBatch(q_lens, seq_lens, block_size, 2, group, 16, dtype, seed=block_size * 17 + group + 1)
    assert_close_to_oracle(batch.run_triton(), batch, dtype)


def test_head_dim_64_prefill_and_decode():
    batch = PagedBatch([33, 1], [40, 70], 16, 2, 4, 64, torch.float16, seed=3)
    assert_close_to_oracle(batch.run_triton(), batch, torch.float16)
    decode = PagedBatch([1, 1], [40, 70], 16, 2, 4, 64, torch.float16, seed=4)
    assert_close_to_oracle(decode.run_triton(num_splits=2), decode, torch.float16)


def test_triton_agrees_with_torch_reference_backend():
    batch = PagedBatch([5, 1, 12], [9, 33, 12], 16, 2, 3, 16, torch.float32, seed=11)
    clean_k = torch.nan_to_num(batch.k_cache)
    clean_v = torch.nan_to_num(batch.v_cache)
    args = (batch.q, clean_k, clean_v, batch.block_tables, batch.query_start_loc, batch.seq_lens_t, batch.scale)
    ref = paged_attention_torch(*args)
    got = paged_attention_triton(*args)  # host maxima derived from the tensors
    torch.testing.assert_close(got, ref, **TOL[torch.float32])


@settings(max_examples=12, deadline=None)
@given(
    data=st.data(),
    block_size=st.sampled_from(BLOCK_SIZES),
    group=st.sampled_from(GROUPS),
)
def test_random_batches_match_dense_oracle(data, block_size, group):
    n = data.draw(st.integers(1, 4))
    q_lens = data.draw(st.lists(st.integers(1, 20), min_size=n, max_size=n))
    extra = data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    seq_lens = [q + e for q, e in zip(q_lens, extra)]
    seed = data.draw(st.integers(0, 2**31 - 1))
    batch = PagedBatch(q_lens, seq_lens, block_size, 2, group, 16, torch.float32, seed=seed)
    assert_close_to_oracle(batch.run_triton(), batch, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_write_kv_cache_matches_reference(block_size, dtype):
    g = torch.Generator().manual_seed(block_size)
    num_blocks, n_kv, d, tokens = 16, 3, 16, 11
    poison = torch.full((num_blocks, block_size, n_kv, d), 1234.5, dtype=dtype)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens]
    slots[3] = -1  # skipped
    k = torch.randn(tokens, n_kv, d, generator=g).to(dtype)
    v = torch.randn(tokens, n_kv, d, generator=g).to(dtype)
    want_k, want_v = poison.clone(), poison.clone()
    write_kv_cache_torch(k, v, want_k, want_v, slots)
    got_k, got_v = poison.clone(), poison.clone()
    write_kv_cache_triton(k, v, got_k, got_v, slots)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=0)
    torch.testing.assert_close(got_v, want_v, rtol=0, atol=0)
    # independent check: each written slot holds its row, the skipped row went nowhere
    flat = got_k.view(-1, n_kv, d)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat[s], k[t])
    assert int((got_k != 1234.5).any(dim=3).sum()) == n_kv * (tokens - 1)  # nothing else touched


def test_write_then_attend_through_slot_mapping():
    """The engine's order: write the chunk's K/V, then attend over cache + chunk."""
    batch = PagedBatch([6, 1], [20, 9], 16, 2, 3, 16, torch.float32, seed=5)
    new_slots, new_k, new_v = [], [], []
    for i, (q_len, s_len) in enumerate(zip(batch.q_lens, batch.seq_lens)):
        slots = batch.slots(i, range(s_len - q_len, s_len))
        new_slots.append(slots)
        new_k.append(batch.k_cache.view(-1, 2, 16)[slots].clone())
        new_v.append(batch.v_cache.view(-1, 2, 16)[slots].clone())
        batch.k_cache.view(-1, 2, 16)[slots] = float("nan")
        batch.v_cache.view(-1, 2, 16)[slots] = float("nan")
    write_kv_cache_triton(torch.cat(new_k), torch.cat(new_v), batch.k_cache, batch.v_cache, torch.cat(new_slots))
    assert_close_to_oracle(batch.run_triton(), batch, torch.float32)


def test_choose_num_splits_is_a_power_of_two_and_grows_for_small_batches():
    cpu = torch.device("cpu")
    small = choose_num_splits(1, 1, 32768, cpu, block_n=16)
    big = choose_num_splits(256, 8, 32768, cpu, block_n=16)
    short = choose_num_splits(1, 1, 16, cpu, block_n=16)
    for n in (small, big, short):
        assert n >= 1 and n & (n - 1) == 0
    assert small > big == 1 and short == 1


def test_rejects_mismatched_heads():
    q = torch.zeros(1, 5, 16)
    cache = torch.zeros(2, 16, 2, 16)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        paged_attention_triton(q, cache, cache, torch.zeros(1, 1, dtype=torch.int32),
                               torch.tensor([0, 1], dtype=torch.int32), torch.tensor([1], dtype=torch.int32), 1.0)


# ------------------------------------------------------------------ RMSNorm / RoPE


def _hf_llama():
    return pytest.importorskip("transformers.models.llama.modeling_llama")


@pytest.mark.slow  # imports Hugging Face transformers for its LlamaRMSNorm / rotate_half
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96])
def test_rms_norm_matches_hf_and_reference(hidden, dtype):
    hf = _hf_llama()
    g = torch.Generator().manual_seed(hidden)
    x = torch.randn(7, hidden, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype)
    module = hf.LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    module.weight.data.copy_(w)
    with torch.no_grad():
        oracle = module(x)
    ref = rms_norm_torch(x, w, 1e-5)
    got = rms_norm_triton(x, w, 1e-5)
    # HF rounds before the weight multiply; allow one extra rounding
    torch.testing.assert_close(ref, oracle, **TOL[dtype])
    torch.testing.assert_close(got, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_fused(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 48, generator=g).to(dtype)
    r = torch.randn(5, 3, 48, generator=g).to(dtype)
    w = torch.randn(48, generator=g).to(dtype)
    out, summed = add_rms_norm_triton(x, r, w, 1e-6)
    assert torch.equal(summed, x + r)
    torch.testing.assert_close(out, rms_norm_torch(x + r, w, 1e-6), **TOL[dtype])
    ref_out, ref_sum = add_rms_norm_torch(x, r, w, 1e-6)
    assert torch.equal(ref_sum, summed)
    torch.testing.assert_close(out, ref_out, **TOL[dtype])


@pytest.mark.slow  # imports Hugging Face transformers for its LlamaRMSNorm / rotate_half
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 64])
def test_rope_matches_hf_rotate_half(head_dim, dtype):
    hf = _hf_llama()
    g = torch.Generator().manual_seed(head_dim)
    T, H, KVH = 9, 6, 2
    q = torch.randn(T, H, head_dim, generator=g).to(dtype)
    k = torch.randn(T, KVH, head_dim, generator=g).to(dtype)
    positions = torch.tensor([0, 1, 2, 7, 100, 3, 3, 511, 64])
    cache = rope_cos_sin_cache(512, head_dim, theta=10000.0)
    # oracle: HF's apply_rotary_pos_emb with cos/sin duplicated across halves, in float64
    half = head_dim // 2
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = positions.double()[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    want_q, want_k = hf.apply_rotary_pos_emb(q.double(), k.double(), cos, sin, unsqueeze_dim=1)
    ref_q, ref_k = apply_rope_torch(q, k, positions, cache)
    got_q, got_k = apply_rope_triton(q, k, positions, cache)
    torch.testing.assert_close(ref_q.double(), want_q, **TOL[dtype])
    torch.testing.assert_close(ref_k.double(), want_k, **TOL[dtype])
    torch.testing.assert_close(got_q, ref_q, **TOL[dtype])
    torch.testing.assert_close(got_k, ref_k, **TOL[dtype])
    assert half * 2 == head_dim
    # in place on strided views of one fused qkv buffer, as a model produces them
    qkv = torch.cat([q.flatten(1), k.flatten(1), k.flatten(1)], dim=1)
    qv = qkv[:, : H * head_dim].view(T, H, head_dim)
    kv = qkv[:, H * head_dim : (H + KVH) * head_dim].view(T, KVH, head_dim)
    apply_rope_triton(qv, kv, positions, cache, inplace=True)
    torch.testing.assert_close(qv, ref_q, **TOL[dtype])
    torch.testing.assert_close(kv, ref_k, **TOL[dtype])
    assert torch.equal(qkv[:, (H + KVH) * head_dim :], k.flatten(1))  # v untouched


# ------------------------------------------------------------------ the GPU benchmark's code path


def _benchmark_module():
    import importlib.util

    path = BENCHMARKS / "kernels.py"
    spec = importlib.util.spec_from_file_location("kvscope_benchmark_kernels", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour of the GPU benchmark")
def test_kernel_benchmark_refuses_cpu_and_smoke_runs(capsys, tmp_path):
    bench = _benchmark_module()
    assert bench.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    out_json = tmp_path / "rows.json"
    assert bench.main(["--smoke", "--json", str(out_json)]) == 0
    import json

    rows = json.loads(out_json.read_text())["rows"]
    assert {(r["kind"], r["impl"]) for r in rows} == {
        ("decode", "triton"), ("decode", "gather+sdpa"), ("prefill", "triton"), ("prefill", "gather+sdpa")}
    assert all(r["ms"] > 0 for r in rows)
