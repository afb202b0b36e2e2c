"""The CPU fast path against plain oracles: the C linear kernel against F.linear (and how it is built), and the
torch backend's per-step attention plan (in-place reads of consecutive blocks, grouped decode, causal prompts)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from kvscope.config.recipe import Recipe
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.attention import AttentionMetadata, TorchAttention
from kvscope.engine.model.loader import load_for_recipe
from kvscope.kernels.cpu import linear_cpu as lc
from kvscope.kernels.cpu.activation_cpu import silu_and_mul_cpu, silu_and_mul_torch
from kvscope.kernels.cpu.c_library import CLibraryUnavailable, load_c_library
from kvscope.kernels.cpu.norm_rope_cpu import rms_norm_cpu, rope_cpu_
from kvscope.kernels.reference.attention_torch import paged_attention_torch, plan_paged_attention
from kvscope.kernels.reference.norm_rope_torch import apply_rope_torch, rms_norm_torch, rope_cos_sin_cache


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's (and the C kernels') thread count set to n for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 5, 8, 17, 64, 300])
@pytest.mark.parametrize(("out_features", "in_features"), [(8, 16), (13, 37), (40, 96), (72, 576), (300, 1536)])
def test_c_linear_matches_f_linear(tokens, out_features, in_features, cpu_isa):
    g = torch.Generator().manual_seed(tokens * 1000 + out_features)
    w = torch.randn(out_features, in_features, generator=g)
    x = torch.randn(tokens, in_features, generator=g)
    got = lc.linear_cpu(x, w)
    assert got is not None, lc.linear_cpu_status()
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-4)


def test_c_linear_reads_rows_of_a_wider_tensor(cpu_isa):
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(6, 200, generator=g)
    x = wide[:, 40:136]  # rows 200 floats apart, unit stride within a row
    w = torch.randn(24, 96, generator=g)
    torch.testing.assert_close(lc.linear_cpu(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)


def test_c_linear_is_the_same_on_any_thread_count(cpu_isa):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(1000, 576, generator=g)  # big enough for the parallel region
    x = torch.randn(5, 576, generator=g)
    with torch_threads(1):
        one = lc.linear_cpu(x, w)
    with torch_threads(2):
        two = lc.linear_cpu(x, w)
    assert torch.equal(one, two)  # each output is one thread's dot product, in the same order


def test_linear_falls_back_to_f_linear_where_the_kernel_does_not_apply():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 96, generator=g)
    x = torch.randn(3, 96, generator=g)
    assert lc.linear_cpu(x.double(), w.double()) is None
    assert lc.linear_cpu(x.half(), w.half()) is None
    assert lc.linear_cpu(x, w.t().contiguous().t()) is None  # a transposed (non-contiguous) weight
    assert lc.linear_cpu(x.t().contiguous().t(), w) is None  # columns of x not unit-stride
    assert torch.equal(lc.linear(x.double(), w.double()), F.linear(x.double(), w.double()))
    assert lc.linear_cpu(x[:0], w).shape == (0, 40)


TINY = {"model": {"source": "random", "shape": "tiny", "seed": 0}, "device": "cpu",
        "cache": {"block_size": 16, "num_blocks": 8}, "workload": {"prompts": ["-"]}}


def test_the_c_kernel_builds_here_and_the_model_uses_it(monkeypatch):
    assert lc.linear_cpu_status() == "kvscope C kernel (float32)"
    engine = LLMEngine(Recipe.from_dict(TINY))  # its runner binds the model to the torch backend
    calls = []
    real = lc.linear_cpu
    monkeypatch.setattr(lc, "linear_cpu", lambda x, w, isa=None: calls.append(tuple(w.shape)) or real(x, w, isa))
    layer = engine.loaded.model.layers[0]
    x = torch.randn(2, engine.loaded.config.hidden_size)
    torch.testing.assert_close(layer.qkv(x), F.linear(x, layer.qkv.weight), rtol=1e-5, atol=1e-5)
    assert calls == [tuple(layer.qkv.weight.shape)]


def test_matmuls_go_through_the_backend_like_the_other_ops(monkeypatch):
    """The backend picks the linear layers' product (the C matmul for float32 on a CPU, F.linear elsewhere); the
    model takes it when bound, and runs F.linear before."""
    assert TorchAttention("cpu", torch.float32).linear.func is lc.linear
    assert TorchAttention("cpu", torch.bfloat16).linear is F.linear
    assert TorchAttention("cuda", torch.float32).linear is F.linear  # (made, not run: no CUDA needed)
    model = load_for_recipe(Recipe.from_dict(TINY)).model
    calls = []
    real = lc.linear_cpu
    monkeypatch.setattr(lc, "linear_cpu", lambda x, w, isa=None: calls.append(tuple(w.shape)) or real(x, w, isa))
    hidden = torch.randn(3, model.config.hidden_size)
    before = model.compute_logits(hidden)
    assert calls == []  # unbound: the model's own torch code
    backend = TorchAttention("cpu", torch.float32)
    model.bind_kv_cache([(torch.empty(0), torch.empty(0))] * len(model.layers), backend)
    torch.testing.assert_close(model.compute_logits(hidden), before, rtol=1e-5, atol=1e-5)
    layer = model.layers[0]
    layer.o_proj(torch.randn(3, model.config.q_size))
    layer.mlp(hidden)
    assert calls == [tuple(model.embed.weight.shape), tuple(layer.o_proj.weight.shape),
                     tuple(layer.mlp.gate_up.weight.shape), tuple(layer.mlp.down.weight.shape)]


def test_c_library_unavailable_says_why_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSCOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KVSCOPE_CPU_KERNELS", "0")
    with pytest.raises(CLibraryUnavailable, match="disabled by KVSCOPE_CPU_KERNELS=0"):
        load_c_library("linear_cpu")
    monkeypatch.delenv("KVSCOPE_CPU_KERNELS")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(CLibraryUnavailable, match="C compiler /nonexistent/cc does not run") as info:
        load_c_library("linear_cpu")
    assert "\n" not in str(info.value)
    cc = tmp_path / "badcc"
    cc.write_text("#!/bin/sh\necho 'gcc version x'\n[ \"$1\" = --version ] && exit 0\n"
                  "echo 'foo.c:1: error: no good' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(CLibraryUnavailable, match="compiling linear_cpu.c with .* failed: foo.c:1: error: no good"):
        load_c_library("linear_cpu")
    assert not list(tmp_path.glob("*.so"))  # no half-written library left behind


def test_c_library_with_an_unwritable_cache_says_so(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("KVSCOPE_CACHE_DIR", str(blocked / "cache"))
    with pytest.raises(CLibraryUnavailable, match="cannot write the kernel cache .*KVSCOPE_CACHE_DIR"):
        load_c_library("linear_cpu")


def test_c_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSCOPE_CACHE_DIR", str(tmp_path))
    lib = load_c_library("linear_cpu")
    built = list(tmp_path.glob("linear_cpu-*.so"))
    assert len(built) == 1 and hasattr(lib, "kvscope_linear_f32")
    mtime = built[0].stat().st_mtime_ns
    load_c_library("linear_cpu")
    assert built[0].stat().st_mtime_ns == mtime and len(list(tmp_path.iterdir())) == 1


class Pool:
    """Per-request K/V written into a paged pool through given block tables; a dense causal oracle."""

    def __init__(self, tables, q_lens, seq_lens, block_size=4, n_kv=2, group=3, d=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        num_blocks = max(b for t in tables for b in t) + 2
        self.k = torch.randn(num_blocks, block_size, n_kv, d, generator=g)
        self.v = torch.randn(num_blocks, block_size, n_kv, d, generator=g)
        self.tables, self.q_lens, self.seq_lens, self.bs = tables, q_lens, seq_lens, block_size
        self.q = torch.randn(sum(q_lens), n_kv * group, d, generator=g)
        width = max(len(t) for t in tables)
        self.block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        starts = [0]
        for n in q_lens:
            starts.append(starts[-1] + n)
        self.starts = starts
        self.scale = d ** -0.5

    def context(self, cache, i):
        rows = [cache[self.tables[i][p // self.bs], p % self.bs] for p in range(self.seq_lens[i])]
        return torch.stack(rows).double()  # [S, n_kv, d]

    def oracle(self):
        out = torch.empty(self.q.shape, dtype=torch.float64)
        for i, (q_len, s_len) in enumerate(zip(self.q_lens, self.seq_lens)):
            qi = self.q[self.starts[i]:self.starts[i + 1]].double()
            group = qi.shape[1] // self.k.shape[2]
            k = self.context(self.k, i).repeat_interleave(group, dim=1)
            v = self.context(self.v, i).repeat_interleave(group, dim=1)
            scores = torch.einsum("qhd,shd->hqs", qi, k) * self.scale
            q_pos = torch.arange(s_len - q_len, s_len)[:, None]
            scores = scores.masked_fill(torch.arange(s_len)[None, :] > q_pos, float("-inf"))
            out[self.starts[i]:self.starts[i + 1]] = torch.einsum("hqs,shd->qhd", scores.softmax(-1), v)
        return out

    def run(self):
        plan = plan_paged_attention(self.block_tables, self.q_lens, self.seq_lens, self.bs)
        got = paged_attention_torch(self.q, self.k, self.v, self.block_tables,
                                    torch.tensor(self.starts, dtype=torch.int32),
                                    torch.tensor(self.seq_lens, dtype=torch.int32), self.scale, plan=plan)
        return got, plan


CASES = {
    # one decode over consecutive blocks: read in place, no gather, written in place
    "decode-consecutive": ([[3, 4, 5]], [1], [11]),
    "decode-scattered": ([[5, 1, 3]], [1], [11]),
    # decodes of different lengths: one padded group with a mask, and a second group
    "decode-batch": ([[0, 1, 18], [7, 2, 9], [4, 19, 20], [10, 11, 12, 13, 14, 15, 16, 17]], [1, 1, 1, 1],
                     [10, 12, 9, 30]),
    # a fresh prompt (causal, no mask), a chunk after cached context, a verification of 1 + 2 drafts, decodes
    "mixed": ([[2, 3, 4], [6, 9, 8], [0, 1], [5]], [9, 3, 3, 1], [9, 11, 7, 2]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_planned_attention_matches_dense_oracle(case):
    tables, q_lens, seq_lens = CASES[case]
    pool = Pool(tables, q_lens, seq_lens, seed=len(case))
    got, plan = pool.run()
    torch.testing.assert_close(got.double(), pool.oracle(), rtol=2e-5, atol=2e-5)
    if case == "decode-consecutive":
        assert plan.decode[0].context.first_slot == 3 * pool.bs and plan.decode[0].rows is None
    if case == "decode-scattered":
        assert plan.decode[0].context.first_slot < 0
    if case == "decode-batch":
        assert len(plan.decode) == 2 and plan.decode[0].context.blocks.shape[0] == 3  # one padded group of three
        assert any(g.keep is not None for g in plan.decode)
    if case == "mixed":
        assert plan.chunks[0].mask is None and plan.chunks[1].mask is not None


def test_plan_is_the_same_as_planning_inside():
    pool = Pool(*CASES["mixed"], seed=3)
    got, _ = pool.run()
    inside = paged_attention_torch(pool.q, pool.k, pool.v, pool.block_tables,
                                   torch.tensor(pool.starts, dtype=torch.int32),
                                   torch.tensor(pool.seq_lens, dtype=torch.int32), pool.scale)
    assert torch.equal(got, inside)
    assert not math.isnan(float(got.sum()))


@pytest.mark.parametrize("case", ["decode-consecutive", "decode-batch"])
def test_padding_rows_after_a_pure_decode_batch(case):
    # the static policy pads the flat batch: q has rows after the plan's tokens, which attention leaves alone
    pool = Pool(*CASES[case], seed=5)
    want = pool.oracle()
    pool.q = torch.cat([pool.q, torch.zeros(2, *pool.q.shape[1:])])
    got, _ = pool.run()
    assert got.shape == pool.q.shape
    torch.testing.assert_close(got[:-2].double(), want, rtol=2e-5, atol=2e-5)


def _attend_through_backend(pool: Pool) -> tuple[torch.Tensor, AttentionMetadata]:
    """The torch backend's attend on a CPU: decode rows by the C kernel, chunks by the torch reference."""
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(0, dtype=torch.int64), block_tables=pool.block_tables,
        query_start_loc=torch.tensor(pool.starts, dtype=torch.int32),
        seq_lens=torch.tensor(pool.seq_lens, dtype=torch.int32), query_lens_host=pool.q_lens,
        seq_lens_host=pool.seq_lens, max_query_len=max(pool.q_lens), max_seq_len=max(pool.seq_lens))
    return TorchAttention("cpu").attend(pool.q, pool.k, pool.v, meta, pool.scale), meta


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("group", [1, 3])
def test_c_attention_matches_dense_oracle(case, group, cpu_isa):
    tables, q_lens, seq_lens = CASES[case]
    pool = Pool(tables, q_lens, seq_lens, group=group, seed=len(case) + group)
    got, meta = _attend_through_backend(pool)
    plan = meta.torch_plan
    decodes = [i for i, n in enumerate(q_lens) if n == 1]
    chunks = [i for i, n in enumerate(q_lens) if n > 1]
    assert plan.decode == [] and plan.chunks == []  # the C kernels ran, for both kinds of request
    assert (plan.decode_requests.tolist() if decodes else plan.decode_requests) == (decodes or None)
    assert (plan.chunk_requests.tolist() if chunks else plan.chunk_requests) == (chunks or None)
    torch.testing.assert_close(got.double(), pool.oracle(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("d", [64, 24])  # 64: the AVX-512 tile where the CPU has it; 24: the portable loop
@pytest.mark.parametrize("group", [1, 3])
def test_c_prefill_attention_long_chunks_over_scattered_blocks(d, group, cpu_isa):
    """Prompts and chunks after cached context, of lengths around the kernel's 16-token and 16-key tiles,
    with a decode beside them; the chunks' rows the same to the bit on one thread (a work item is one
    thread's)."""
    g = torch.Generator().manual_seed(d + group)
    q_lens = [70, 1, 16, 33, 2, 17]
    seq_lens = [70, 40, 100, 33, 300, 81]
    ids = torch.randperm(sum((n + 15) // 16 for n in seq_lens) + 5, generator=g).tolist()
    tables, at = [], 0
    for n in seq_lens:
        tables.append(ids[at:at + (n + 15) // 16])
        at += (n + 15) // 16
    pool = Pool(tables, q_lens, seq_lens, block_size=16, n_kv=2, group=group, d=d, seed=d)
    got, meta = _attend_through_backend(pool)
    assert meta.torch_plan.chunk_requests.tolist() == [0, 2, 3, 4, 5]
    torch.testing.assert_close(got.double(), pool.oracle(), rtol=2e-5, atol=2e-5)
    with torch_threads(1):
        one, _ = _attend_through_backend(pool)
    chunk_rows = [r for i in (0, 2, 3, 4, 5) for r in range(pool.starts[i], pool.starts[i + 1])]
    assert torch.equal(one[chunk_rows], got[chunk_rows])  # (a lone decode splits its keys over the threads)


def test_c_decode_attention_long_contexts_many_requests(cpu_isa):
    # 24 decodes of 1-300 keys over scattered 16-slot blocks: every work-sharing path of the kernel
    g = torch.Generator().manual_seed(7)
    lens = [int(n) for n in torch.randint(1, 300, (24,), generator=g)]
    lens[0], lens[1] = 1, 300
    ids = torch.randperm(24 * 19 + 3, generator=g).tolist()
    tables, at = [], 0
    for n in lens:
        tables.append(ids[at:at + (n + 15) // 16])
        at += (n + 15) // 16
    pool = Pool(tables, [1] * 24, lens, block_size=16, n_kv=3, group=3, d=64, seed=9)
    got, _ = _attend_through_backend(pool)
    torch.testing.assert_close(got.double(), pool.oracle(), rtol=2e-5, atol=2e-5)
    with torch_threads(1):
        one, _ = _attend_through_backend(pool)
    assert torch.equal(one, got)  # one request per work item: the same arithmetic on any thread count


def test_c_decode_attention_reads_strided_queries(cpu_isa):
    pool = Pool(*CASES["decode-batch"], n_kv=2, group=3, d=8, seed=11)
    wide = torch.zeros(pool.q.shape[0], 80)
    wide[:, 10:58] = pool.q.flatten(1)
    pool.q = wide[:, 10:58].unflatten(-1, (6, 8))  # heads 8 apart, tokens 80 apart (as q inside qkv)
    got, _ = _attend_through_backend(pool)
    torch.testing.assert_close(got.double(), pool.oracle(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(("tokens", "hidden"), [(1, 576), (3, 37), (70, 1024)])
def test_c_rms_norm_matches_the_torch_reference(tokens, hidden, cpu_isa):
    g = torch.Generator().manual_seed(hidden)
    wide = torch.randn(tokens, hidden + 9, generator=g)
    x = wide[:, 4:4 + hidden]  # rows hidden + 9 apart
    w = torch.randn(hidden, generator=g)
    got = rms_norm_cpu(x, w, 1e-5)
    assert got is not None
    torch.testing.assert_close(got, rms_norm_torch(x, w, 1e-5), rtol=1e-6, atol=1e-6)
    assert rms_norm_cpu(x.double(), w.double(), 1e-5) is None
    assert rms_norm_cpu(x, w[:-1], 1e-5) is None


def test_c_rope_rotates_in_place_like_the_torch_reference(cpu_isa):
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(5, 9 * 8 + 2 * 3 * 8, generator=g)
    q, k = qkv[:, :72].unflatten(-1, (9, 8)), qkv[:, 72:96].unflatten(-1, (3, 8))
    positions = torch.tensor([0, 7, 3, 40, 1])
    table = rope_cos_sin_cache(64, 8)
    want_q, want_k = apply_rope_torch(q, k, positions, table)
    assert rope_cpu_(q, k, positions, table)
    torch.testing.assert_close(q, want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, want_k, rtol=1e-6, atol=1e-6)
    assert not rope_cpu_(q, k, positions.int(), table)  # int32 positions: the torch reference's job
    assert not rope_cpu_(q, k, positions[:4], table)


@pytest.mark.parametrize("length", [1, 2, 17, 300, 1000])
def test_c_decode_attention_one_request_split_over_the_threads(length, cpu_isa):
    # fewer requests than threads: the keys are split into ranges whose softmax states are merged
    g = torch.Generator().manual_seed(length)
    blocks = (length + 15) // 16
    table = torch.randperm(blocks + 5, generator=g)[:blocks].tolist()
    pool = Pool([table], [1], [length], block_size=16, n_kv=3, group=3, d=64, seed=length)
    with torch_threads(2):
        got, _ = _attend_through_backend(pool)
    torch.testing.assert_close(got.double(), pool.oracle(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_c_silu_and_mul_matches_the_torch_reference(tokens, cpu_isa):
    g = torch.Generator().manual_seed(tokens)
    gate_up = torch.randn(tokens, 2 * 96, generator=g) * 4
    got = silu_and_mul_cpu(gate_up)
    assert got is not None and got.shape == (tokens, 96)
    torch.testing.assert_close(got, silu_and_mul_torch(gate_up), rtol=1e-6, atol=1e-6)
    assert silu_and_mul_cpu(gate_up.double()) is None  # not float32: the caller's torch code runs
    assert silu_and_mul_cpu(torch.randn(7, 300)[:, :192]) is None  # strided rows
