"""The Triton kernels on the device they would run on: compiled on CUDA (float32, float16, bfloat16), or through
the interpreter on CPU (float32, float16) where there is no GPU.

The same oracles as tests/kernels/test_kernels_triton.py (dense float64 attention over the unpaged K/V for the paged
attention; the torch reference kernels for the KV write, RMSNorm and RoPE), with the inputs moved to the
device. benchmarks/gpu_check.py runs this file with TRITON_INTERPRET=0 on a GPU.
"""

import os

import pytest
import torch

ON_CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from test_kernels_triton import TOL, PagedBatch  # noqa: E402

from kvscope.kernels.reference.attention_torch import write_kv_cache_torch  # noqa: E402
from kvscope.kernels.reference.norm_rope_torch import (  # noqa: E402
    add_rms_norm_torch,
    apply_rope_torch,
    rms_norm_torch,
    rope_cos_sin_cache,
)
from kvscope.kernels.triton.attention_triton import paged_attention_triton, write_kv_cache_triton  # noqa: E402
from kvscope.kernels.triton.norm_rope_triton import add_rms_norm_triton, apply_rope_triton, rms_norm_triton  # noqa: E402

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_CUDA else [])
DEVICE_TOL = {**TOL, torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}
if ON_CUDA:  # fp16 outputs are rounded once more on the GPU's fast paths (exp2, fused multiply-adds)
    DEVICE_TOL[torch.float16] = {"rtol": 5e-3, "atol": 5e-3}


def run_on_device(batch: PagedBatch) -> torch.Tensor:
    """The paged attention of `batch` on DEVICE, into a NaN-poisoned output; returned on the CPU."""
    d = DEVICE
    out = torch.full(batch.q.shape, float("nan"), dtype=batch.q.dtype, device=d)
    got = paged_attention_triton(
        batch.q.to(d), batch.k_cache.to(d), batch.v_cache.to(d), batch.block_tables.to(d),
        batch.query_start_loc.to(d), batch.seq_lens_t.to(d), batch.scale, max_query_len=max(batch.q_lens),
        max_seq_len=max(batch.seq_lens), out=out)
    assert got.data_ptr() == out.data_ptr()
    return got.cpu()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 8])
@pytest.mark.parametrize("q_lens", [(1, 1, 1, 1), (1, 7, 1, 20)], ids=["decode", "mixed"])
def test_paged_attention_matches_dense_oracle(q_lens, group, dtype):
    seq_lens = [37, 5, 64, 100] if q_lens[1] == 1 else [37, 12, 64, 20]
    batch = PagedBatch(q_lens, seq_lens, 16, 2, group, 64, dtype, seed=group * 7 + len(q_lens))
    got = run_on_device(batch)
    assert got.dtype == dtype and not torch.isnan(got).any(), "unwritten or NaN-contaminated output elements"
    torch.testing.assert_close(got.double(), batch.dense_oracle(), **DEVICE_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache_matches_reference(dtype):
    g = torch.Generator().manual_seed(3)
    num_blocks, bs, n_kv, d, tokens = 6, 16, 2, 64, 21
    k = torch.randn(tokens, n_kv, d, generator=g).to(dtype)
    v = torch.randn(tokens, n_kv, d, generator=g).to(dtype)
    slots = torch.randperm(num_blocks * bs, generator=g)[:tokens]
    slots[3] = -1  # a padded token: skipped
    want_k = torch.full((num_blocks, bs, n_kv, d), 1234.5, dtype=dtype)
    want_v = want_k.clone()
    write_kv_cache_torch(k, v, want_k, want_v, slots)
    got_k, got_v = (torch.full_like(want_k, 1234.5, device=DEVICE) for _ in range(2))
    write_kv_cache_triton(k.to(DEVICE), v.to(DEVICE), got_k, got_v, slots.to(DEVICE))
    assert torch.equal(got_k.cpu(), want_k) and torch.equal(got_v.cpu(), want_v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norms_and_rope_match_reference(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 576, generator=g).to(dtype)
    r = torch.randn(9, 576, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(576, generator=g)).to(dtype)
    tol = DEVICE_TOL[dtype]
    # the references run in float32 on the CPU, then round to the dtype like the kernels' outputs
    ref = rms_norm_torch(x.float(), w.float(), 1e-5).to(dtype)
    torch.testing.assert_close(rms_norm_triton(x.to(DEVICE), w.to(DEVICE), 1e-5).cpu(), ref, **tol)
    ref_out, ref_sum = add_rms_norm_torch(x.float(), r.float(), w.float(), 1e-5)
    out, summed = add_rms_norm_triton(x.to(DEVICE), r.to(DEVICE), w.to(DEVICE), 1e-5)
    torch.testing.assert_close(out.cpu(), ref_out.to(dtype), **tol)
    torch.testing.assert_close(summed.cpu(), ref_sum.to(dtype), **tol)
    q = torch.randn(9, 8, 64, generator=g).to(dtype)
    k = torch.randn(9, 2, 64, generator=g).to(dtype)
    positions = torch.tensor([0, 1, 2, 7, 100, 3, 3, 511, 64])
    cache = rope_cos_sin_cache(512, 64, theta=10000.0)
    want_q, want_k = apply_rope_torch(q.float(), k.float(), positions, cache)
    got_q, got_k = apply_rope_triton(q.to(DEVICE), k.to(DEVICE), positions.to(DEVICE), cache.to(DEVICE))
    torch.testing.assert_close(got_q.cpu(), want_q.to(dtype), **tol)
    torch.testing.assert_close(got_k.cpu(), want_k.to(dtype), **tol)
