"""EngineView and Metrics over event streams: hand-built ones with hand-computed answers, and
streams produced by the engine's own BlockManager (whose state is the oracle)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kvscope.cli.console import plain_text
from kvscope.cli.summary_table import summary_table
from kvscope.events.bus import EventBus, EventList
from kvscope.events.records import BlockEvent, KVSnapshot, RequestEvent, RunInfo, StepBegin, StepEnd
from kvscope.events.vocabulary import (
    ALLOC,
    ARRIVED,
    CACHED,
    EVICT,
    FINISHED,
    FIRST_TOKEN,
    FREE,
    PREEMPTED,
    PREFIX_HIT,
    RESUMED,
    SCHEDULED,
)
from kvscope.inspector.metrics import Metrics, Percentiles, fragmentation, percentile, summarize
from kvscope.inspector.state import EngineView


def run_info(num_blocks: int = 8, block_size: int = 4, prefix_caching: bool = True, ts: int = 0) -> RunInfo:
    return RunInfo(ts, -1, "tiny", 2, 4, 2, 8, 32, "float32", "cpu", "torch", "continuous",
                   num_blocks, block_size, 1024, 64, 8, 256, prefix_caching)


def req(ts: int, step: int, rid: int, what: str, prompt: int = 6, out: int = 0, reason: str = "") -> RequestEvent:
    return RequestEvent(ts, step, rid, what, prompt, out, 0, 8, reason)


def blk(what: str, rid: int, ids: tuple[int, ...], logical: int, refs: tuple[int, ...],
        hashes: tuple[int, ...] | None = None) -> BlockEvent:
    return BlockEvent(0, 0, what, rid, ids, logical, refs, hashes if hashes is not None else (0,) * len(ids))


# --------------------------------------------------------------------------- EngineView, by hand
def test_view_follows_alloc_share_free_cache_and_evict():
    v = EngineView()
    v.apply(run_info())
    assert v.free_blocks() == set(range(8)) and v.cached_blocks() == set()

    v.apply(blk(ALLOC, 1, (0, 1), 0, (1, 1)))
    v.apply(blk(CACHED, 1, (0,), 0, (1,), (111,)))
    v.apply(blk(ALLOC, 2, (2, 3), 0, (1, 1)))
    assert v.tables == {1: [0, 1], 2: [2, 3]}
    assert [v.block_state(i) for i in range(4)] == ["used"] * 4
    assert v.block_owner[:5] == [1, 1, 2, 2, -1]

    # request 3 shares block 0 by prefix hit, then gets a fresh block at logical index 1
    v.apply(blk(PREFIX_HIT, 3, (0,), 0, (2,), (111,)))
    v.apply(blk(ALLOC, 3, (4,), 1, (1,)))
    assert v.tables[3] == [0, 4]
    assert v.block_state(0) == "shared"

    # request 2 is preempted: all its blocks go back, unhashed -> free
    v.apply(blk(FREE, 2, (2, 3), 0, (0, 0)))
    assert 2 not in v.tables and {2, 3} <= v.free_blocks()

    # request 1 (the owner of shared block 0) finishes: block 0 stays with request 3
    v.apply(blk(FREE, 1, (0, 1), 0, (1, 0), (111, 0)))
    assert v.block_owner[0] == 3 and v.block_state(0) == "used"
    v.apply(blk(FREE, 3, (0, 4), 0, (0, 0), (111, 0)))
    assert v.cached_blocks() == {0}
    assert v.block_state(0) == "cached" and v.block_owner[0] == -1

    # the cached block is evicted and reused
    v.apply(BlockEvent(0, 0, EVICT, -1, (0,), -1, (0,), (111,)))
    assert v.cached_blocks() == set() and v.block_state(0) == "free"
    v.apply(blk(ALLOC, 2, (0,), 0, (1,)))
    assert v.tables == {2: [0]} and v.used_blocks() == {0}


def test_view_tracks_request_lifecycle():
    v = EngineView()
    v.apply(run_info())
    v.apply(req(10, -1, 7, ARRIVED))
    assert v.requests[7].status == "waiting" and v.requests[7].arrived_ts == 10
    v.apply(StepBegin(20, 0))
    v.apply(req(21, 0, 7, SCHEDULED))
    v.apply(req(30, 0, 7, FIRST_TOKEN, out=1))
    assert v.requests[7].status == "running" and v.requests[7].first_token_ts == 30
    v.apply(req(40, 1, 7, PREEMPTED, out=2))
    assert v.requests[7].status == "preempted" and v.requests[7].preemptions == 1
    assert [r.request_id for r in v.waiting()] == [7]
    v.apply(req(50, 2, 7, RESUMED, out=2))
    v.apply(req(60, 3, 7, FINISHED, out=4, reason="length"))
    r = v.requests[7]
    assert (r.status, r.finished_ts, r.finish_reason, r.output_tokens) == ("finished", 60, "length", 4)
    assert v.step == 0


def test_run_info_resets_the_view():
    v = EngineView()
    v.apply(run_info(num_blocks=4))
    v.apply(blk(ALLOC, 1, (0,), 0, (1,)))
    v.apply(run_info(num_blocks=6))
    assert v.tables == {} and len(v.block_refs) == 6 and v.free_blocks() == set(range(6))


# --------------------------------------------------------------------------- EngineView vs the engine
def _drive_block_manager(seed: int, steps: int = 300):
    """Random admissions, growth, finishes and preemptions on the engine's BlockManager."""
    from kvscope.config.sampling_params import SamplingParams
    from kvscope.engine.core.block_manager import BlockManager
    from kvscope.engine.core.request import Request

    rng = random.Random(seed)
    bus = EventBus()
    view = EngineView()
    bus.subscribe(view.apply)
    bs, nb = 4, 24
    bus.emit(run_info(num_blocks=nb, block_size=bs))
    bm = BlockManager(nb, bs, True, bus)
    live: list[Request] = []
    prefixes = [[rng.randrange(50) for _ in range(12)] for _ in range(3)]
    next_id = 0
    saw = {"hit": 0, "evict": 0}
    counter = EventList()
    bus.subscribe(counter)
    for step in range(steps):
        bm.step = step
        op = rng.random()
        if op < 0.35 or not live:
            tail = [rng.randrange(50) for _ in range(rng.randrange(0, 6))]
            prompt = rng.choice(prefixes)[: rng.randrange(4, 13)] + tail
            r = Request(next_id, prompt, SamplingParams(), 8, 0)
            next_id += 1
            hits = bm.find_cached_prefix(r)
            need = -(-len(prompt) // bs) - len(hits) + sum(1 for b in hits if bm.ref_counts[b] == 0)
            fits = need <= bm.num_free_blocks
            got = bm.allocate_slots(r, len(prompt) - len(hits) * bs, hits)
            assert (got is not None) == fits
            if got is None:
                continue
            r.num_computed_tokens = len(prompt)
            bm.cache_full_blocks(r)
            live.append(r)
        elif op < 0.75:
            r = rng.choice(live)
            grow = rng.randrange(1, 5)
            if bm.allocate_slots(r, grow) is None:
                bm.free(r)  # preemption
                live.remove(r)
                r.num_computed_tokens = 0
                continue
            r.token_ids.extend(rng.randrange(50) for _ in range(grow))
            r.num_computed_tokens += grow
            bm.cache_full_blocks(r)
        else:
            r = live.pop(rng.randrange(len(live)))
            bm.free(r)
        tables = {r.request_id: r.block_table for r in live if r.block_table}
        assert view.tables == tables
        assert view.block_refs == bm.ref_counts
        assert view.free_blocks() == bm.free_block_ids()
        assert view.cached_blocks() == bm.cached_block_ids()
        for b, refs in enumerate(bm.ref_counts):
            if refs:
                assert b in tables[view.block_owner[b]]
            else:
                assert view.block_owner[b] == -1
    for e in counter.events:
        if e.kind == "block":
            saw["hit"] += e.what == PREFIX_HIT
            saw["evict"] += e.what == EVICT
    return saw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_view_rebuilds_block_manager_state(seed):
    saw = _drive_block_manager(seed)
    assert saw["hit"] > 0 and saw["evict"] > 0  # the stream exercised sharing and eviction


# --------------------------------------------------------------------------- Metrics, by hand
MS = 1_000_000


def kv(ts: int, step: int, used: int = 0, cached: int = 0, free: int = 0, stored: int = 0, empty: int = 0,
       waste: int = 0) -> KVSnapshot:
    return KVSnapshot(ts, step, num_blocks=10, block_size=4, used_blocks=used, cached_blocks=cached,
                      free_blocks=free, tokens_stored=stored, reserved_empty_slots=empty,
                      contiguous_waste_slots=waste)


def _two_request_stream() -> list:
    """Request 1: arrives 0, first token at 10 ms, tokens at 10, 14, 20 ms, finishes at 20 ms.
    Request 2: arrives 2 ms, preempted once, first token at 14 ms, 2 tokens in one step at 30 ms."""
    ev = [run_info(num_blocks=10, block_size=4)]
    ev += [req(0, -1, 1, ARRIVED, prompt=6), req(2 * MS, -1, 2, ARRIVED, prompt=8)]
    ev += [StepBegin(5 * MS, 0), req(5 * MS + 1, 0, 1, SCHEDULED, prompt=6), req(5 * MS + 2, 0, 2, SCHEDULED, prompt=8),
           req(10 * MS, 0, 1, FIRST_TOKEN, out=1),
           StepEnd(10 * MS, 0, 5 * MS, 14, 64, prefill=((1, 6), (2, 8)), sampled=((1, 1),), num_running=2),
           kv(10 * MS, 0, used=4, free=6, stored=14, empty=2, waste=16)]
    ev += [StepBegin(11 * MS, 1), req(11 * MS + 5, 1, 2, PREEMPTED), req(14 * MS, 1, 2, FIRST_TOKEN, out=1),
           StepEnd(14 * MS, 1, 11 * MS, 2, 64, decode=(1,), sampled=((1, 1), (2, 1)), num_running=1, num_waiting=1),
           kv(14 * MS, 1, used=2, free=8, stored=7, empty=1, waste=7)]
    ev += [StepBegin(15 * MS, 2), req(15 * MS + 1, 2, 2, RESUMED, prompt=8, out=1),
           req(20 * MS, 2, 1, FINISHED, out=3, reason="length"),
           StepEnd(20 * MS, 2, 15 * MS, 10, 64, prefill=((2, 9),), decode=(1,), sampled=((1, 1),)),
           kv(20 * MS, 2, used=3, free=7, stored=9, empty=3, waste=5)]
    ev += [StepBegin(21 * MS, 3), StepEnd(21 * MS, 3, 21 * MS, 0, 64)]  # an idle step
    ev += [StepBegin(25 * MS, 4), req(30 * MS, 4, 2, FINISHED, out=3, reason="stop"),
           StepEnd(30 * MS, 4, 25 * MS, 2, 64, decode=(2,), sampled=((2, 2),)),
           kv(30 * MS, 4, used=0, cached=1, free=9)]
    return ev


def test_metrics_latencies_and_counts_match_hand_computation():
    s = summarize(_two_request_stream())
    assert (s.requests, s.finished, s.prompt_tokens, s.generated_tokens) == (2, 2, 14, 6)
    assert s.steps == 5 and s.preemptions == 1
    assert s.duration_s == pytest.approx(0.025)
    assert s.throughput_tok_s == pytest.approx(6 / 0.025)
    assert s.tokens_per_step_mean == pytest.approx((14 + 2 + 10 + 2) / 4)  # idle step excluded
    assert s.ttft_ms.count == 2  # 10 ms and 12 ms
    assert s.ttft_ms.p50 == pytest.approx(11.0) and s.ttft_ms.p99 == pytest.approx(11.98)
    assert s.e2e_ms.mean == pytest.approx((20 + 28) / 2)
    # request 1: gaps 4 ms and 6 ms; request 2: one gap of 16 ms over 2 tokens -> 8, 8
    itl = [4.0, 6.0, 8.0, 8.0]
    assert s.itl_ms.count == 4
    assert s.itl_ms.p50 == pytest.approx(float(np.percentile(itl, 50)))
    assert s.itl_ms.p99 == pytest.approx(float(np.percentile(itl, 99)))
    assert s.peak_kv_blocks == 4 and s.peak_kv_usage == pytest.approx(0.4)
    # internal: 2/16, 1/8, 3/12, 0 (no used blocks) -> mean of the four, last = 0
    assert s.internal_fragmentation == 0.0
    assert s.internal_fragmentation_mean == pytest.approx((2 / 16 + 1 / 8 + 3 / 12 + 0) / 4)
    assert s.contiguous_waste_mean == pytest.approx((16 / 30 + 7 / 14 + 5 / 14 + 0) / 4)
    # prefix lookups: 6 + 8 at first scheduling, 8 + 1 on resume; no hits
    assert s.prefix_lookup_tokens == 23 and s.prefix_hit_rate == 0.0


def test_prefix_hit_rate_counts_hit_blocks_times_block_size():
    ev = [run_info(block_size=4), req(0, -1, 1, ARRIVED, prompt=10), req(1, 0, 1, SCHEDULED, prompt=10),
          blk(PREFIX_HIT, 1, (3, 5), 0, (2, 2), (9, 10))]
    assert summarize(ev).prefix_hit_rate == pytest.approx(8 / 10)
    ev[0] = run_info(block_size=4, prefix_caching=False)
    assert summarize(ev).prefix_lookup_tokens == 0 and summarize(ev).prefix_hit_rate == 0.0


def test_metrics_restart_on_run_info_and_summary_round_trips():
    m = Metrics()
    for e in _two_request_stream():
        m(e)
    first = m.summary().to_dict()
    assert list(first)[:3] == ["requests", "finished", "prompt_tokens"]
    assert first["ttft_ms"]["count"] == 2
    m(run_info())
    assert m.summary().requests == 0 and m.summary().generated_tokens == 0
    text = plain_text(summary_table(summarize(_two_request_stream())))
    assert "2/2 finished" in text and "preemptions     1" in text


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy(n):
    rng = random.Random(n)
    xs = sorted(rng.uniform(0, 100) for _ in range(n))
    for q in (0, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    p = Percentiles.of(xs)
    assert p.count == n and p.mean == pytest.approx(float(np.mean(xs)))


def test_fragmentation_of_a_snapshot():
    f = fragmentation(KVSnapshot(0, 0, 20, 16, 5, 3, 12, 70, 10, 130))
    assert f.usage == pytest.approx(5 / 20) and f.cached == pytest.approx(3 / 20)
    assert f.internal == pytest.approx(10 / 80)
    assert f.contiguous_waste == pytest.approx(130 / 200)
    empty = fragmentation(KVSnapshot(0, 0, 20, 16, 0, 0, 20, 0, 0, 0))
    assert (empty.usage, empty.internal, empty.contiguous_waste) == (0.0, 0.0, 0.0)
