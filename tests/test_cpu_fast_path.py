"""The CPU fast path: split-K linear over input-major weights, and the per-step attention plan of the torch
backend (in-place reads of consecutive blocks, grouped decode, causal prompts), against plain oracles."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kvscope.engine.llm_engine import load_for_recipe
from kvscope.engine.recipe import Recipe
from kvscope.kernels import linear_torch as lt
from kvscope.kernels.attention_torch import paged_attention_torch, plan_paged_attention


@pytest.mark.parametrize("tokens", [1, 5, 64])
@pytest.mark.parametrize("chunks", [2, 3, 4])
def test_split_k_linear_matches_f_linear(tokens, chunks, monkeypatch):
    g = torch.Generator().manual_seed(tokens * 10 + chunks)
    w = torch.randn(40, 96, generator=g)
    x = torch.randn(tokens, 96, generator=g)
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or real_bmm(*a))
    got = lt.linear_torch(x, lt.input_major(w), chunks=chunks)
    assert calls, "the split-K path did not run"
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_linear_falls_back_to_one_gemm(monkeypatch):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 96, generator=g)
    monkeypatch.setattr(torch, "bmm", lambda *a: pytest.fail("split-K used"))
    x = torch.randn(lt.SPLIT_K_MAX_TOKENS + 1, 96, generator=g)
    assert torch.equal(lt.linear_torch(x, lt.input_major(w), chunks=2), F.linear(x, lt.input_major(w)))
    x = torch.randn(3, 96, generator=g)
    assert torch.equal(lt.linear_torch(x, w, chunks=2), F.linear(x, w))  # row-major weight
    im = lt.input_major(w)
    assert torch.equal(lt.linear_torch(x, im, chunks=5), F.linear(x, im))  # 96 % 5 != 0


def test_input_major_is_the_same_matrix():
    w = torch.randn(7, 5)
    im = lt.input_major(w)
    assert torch.equal(im, w) and im.shape == w.shape
    assert lt.is_input_major(im) and not lt.is_input_major(w)
    ids = torch.tensor([0, 6, 3])
    assert torch.equal(F.embedding(ids, im), F.embedding(ids, w))


def test_cpu_model_stores_matmul_weights_input_major():
    loaded = load_for_recipe(Recipe.from_dict({
        "model": {"source": "random", "shape": "tiny", "seed": 0}, "device": "cpu",
        "cache": {"block_size": 16, "num_blocks": 8}, "workload": {"prompts": ["-"]},
    }))
    model = loaded.model
    layer = model.layers[0]
    for weight in (layer.qkv.weight, layer.o_proj.weight, layer.mlp.gate_up.weight, layer.mlp.down.weight):
        assert lt.is_input_major(weight)
    head = model.embed.weight if model.lm_head is None else model.lm_head.weight
    assert lt.is_input_major(head)


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
