"""The contiguous allocator (the baseline paging replaces): one first-fit max-length range per request, so
free blocks end up in holes no waiting request fits in. Oracles: a hand-built hole pattern (the pool has
enough free blocks, no run long enough), the paged BlockManager on the same pattern, and the paged engine's
greedy tokens on the same requests."""

from __future__ import annotations

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.block_manager import BlockManager
from kvscope.engine.core.contiguous_blocks import ContiguousBlockManager
from kvscope.engine.core.request import Request
from kvscope.engine.llm import LLM
from kvscope.errors import RecipeError
from kvscope.events.bus import EventBus, EventList
from kvscope.inspector.metrics import summarize


def request(rid: int, prompt: int, max_tokens: int) -> Request:
    return Request(rid, list(range(1, prompt + 1)), SamplingParams(), max_tokens=max_tokens, arrival_ts=0)


def test_a_request_that_fits_the_free_blocks_but_no_free_range_is_refused_and_counted():
    bm = ContiguousBlockManager(12, 4, EventBus(), max_model_len=64)
    a, b, c = request(0, 4, 12), request(1, 4, 12), request(2, 4, 12)  # 16 tokens: 4 blocks each
    for r in (a, b, c):
        assert bm.allocate_slots(r, r.num_tokens) is not None
    assert (a.block_table, b.block_table, c.block_table) == ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11])
    bm.free(b)
    d = request(3, 4, 4)  # 8 tokens: 2 blocks, first fit: the start of b's hole
    assert bm.allocate_slots(d, d.num_tokens) == [4, 5]
    bm.free(a)
    assert bm.free_runs() == [(0, 4), (6, 2)] and bm.num_free_blocks == 6 and bm.largest_free_run() == 4
    e = request(4, 8, 16)  # 24 tokens: 6 blocks; 6 are free, in runs of 4 and 2
    assert bm.allocate_slots(e, e.num_tokens) is None and e.block_table == []
    assert bm.refused_with_memory_free == 1
    assert bm.allocate_slots(e, e.num_tokens) is None and bm.refused_with_memory_free == 1  # counted once
    # the paged pool in the same state hands the 6 free blocks out
    paged = BlockManager(12, 4, False, EventBus())
    held = [request(9, 4, 4) for _ in range(3)]
    for r in held:
        paged.allocate_slots(r, 16)
    paged.free(held[0])
    paged.allocate_slots(request(5, 4, 4), 8)
    paged.free(held[1])
    assert paged.allocate_slots(request(6, 8, 16), 24) is not None


def test_a_range_holds_the_whole_request_and_decode_takes_no_block():
    bm = ContiguousBlockManager(16, 4, EventBus(), max_model_len=64)
    r = request(0, 5, 7)  # 12 tokens at most: 3 blocks reserved up front
    assert bm.allocate_slots(r, 5) == [0, 1, 2]
    r.num_computed_tokens = 5
    for _ in range(7):
        assert bm.allocate_slots(r, 1) == []
        r.num_computed_tokens += 1


RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 40, "allocator": "contiguous"},
          "scheduler": {"max_num_seqs": 6, "max_model_len": 128},
          "sampling": {"temperature": 0.0, "ignore_eos": True},
          "workload": {"synthetic": {"num_requests": 16, "prompt_len": {"min": 4, "max": 12},
                                     "output_len": {"min": 4, "max": 40}, "seed": 2}}}


def run(allocator: str):
    bus = EventBus()
    events = bus.subscribe(EventList())
    llm = LLM({**RECIPE, "cache": {**RECIPE["cache"], "allocator": allocator}}, bus=bus)
    prompts = [[(7 * i + j) % 500 + 1 for j in range(4 + i % 9)] for i in range(16)]
    outs = llm.generate(prompts, [SamplingParams(max_tokens=4 + (11 * i) % 37, ignore_eos=True) for i in range(16)])
    return [o.token_ids for o in outs], events.events, llm.engine


def test_the_engine_on_contiguous_ranges_gives_the_paged_engines_tokens_and_meets_external_fragmentation():
    tokens, events, engine = run("contiguous")
    paged_tokens, paged_events, _ = run("paged")
    assert tokens == paged_tokens
    allocs = [e for e in events if e.kind == "block" and e.what == "alloc"]
    assert all(list(e.block_ids) == list(range(e.block_ids[0], e.block_ids[0] + len(e.block_ids))) for e in allocs)
    assert len(allocs) == 16  # one range per request, nothing more while it decodes
    assert engine.block_manager.num_free_blocks == 40 and engine.block_manager.free_runs() == [(0, 40)]
    summary, paged = summarize(events), summarize(paged_events)
    assert summary.refused_with_memory_free > 0 and summary.external_fragmentation_mean > 0
    assert paged.refused_with_memory_free == 0 and paged.external_fragmentation_mean == 0
    assert summary.steps > paged.steps  # requests waited with memory free
    kv = [e for e in events if e.kind == "kv"]
    assert all(e.largest_free_run <= e.free_blocks for e in kv) and kv[-1].refused_with_memory_free > 0


def test_contiguous_refuses_the_prefix_cache_and_speculation_in_one_line():
    with pytest.raises(RecipeError, match="cache.prefix_caching: needs the paged allocator"):
        Recipe.from_dict({**RECIPE, "cache": {"allocator": "contiguous", "prefix_caching": True}})
    with pytest.raises(RecipeError, match="cache.allocator: contiguous does not combine"):
        Recipe.from_dict({**RECIPE, "speculative": {"method": "ngram"}})
    with pytest.raises(RecipeError, match="cache.allocator: must be one of paged, contiguous, got 'buddy'"):
        Recipe.from_dict({**RECIPE, "cache": {"allocator": "buddy"}})
