"""Block manager: property-based allocate / append / free / prefix-cache sequences keep the pool consistent."""

from collections import Counter
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core import block_manager
from kvscope.engine.core.block_manager import BlockManager, chain_hash
from kvscope.engine.core.request import Request
from kvscope.events.bus import EventBus, EventList


def make_request(rid: int, tokens: list[int]) -> Request:
    return Request(rid, list(tokens), SamplingParams(), max_tokens=64, arrival_ts=0)


def check_invariants(bm: BlockManager, live: list[Request]) -> None:
    holders = Counter(b for r in live for b in r.block_table)
    for r in live:  # within one request a block appears once
        assert len(set(r.block_table)) == len(r.block_table)
    for b in range(bm.num_blocks):
        assert bm.ref_counts[b] == holders.get(b, 0), f"block {b}: ref {bm.ref_counts[b]} vs {holders.get(b, 0)}"
        assert (b in bm.free_queue) == (bm.ref_counts[b] == 0)
    for h, b in bm.hash_to_block.items():
        assert bm.block_hash[b] == h
    for b in range(bm.num_blocks):  # a cached block keeps its key (index, parent's hash, tokens), a plain one none
        key = bm.block_key[b]
        assert (key is not None) == bool(bm.block_hash[b])
        assert key is None or (len(key[2]) == bm.block_size and bm.block_hash[b] == block_manager.chain_hash(*key[1:]))
    assert bm.num_cached_free == sum(1 for b in bm.free_queue if bm.block_hash[b])
    assert bm.num_shared_extra == sum(max(0, c - 1) for c in holders.values())


ops = st.lists(
    st.tuples(st.sampled_from(["new", "grow", "free"]), st.integers(0, 50), st.integers(1, 40)),
    min_size=1, max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, num_blocks=st.integers(1, 24), block_size=st.sampled_from([1, 2, 4, 16]),
       prefix=st.booleans(), vocab=st.integers(2, 5))
def test_random_sequences_keep_pool_consistent(ops, num_blocks, block_size, prefix, vocab):
    run_sequence(ops, num_blocks, block_size, prefix, vocab)


@settings(max_examples=100, deadline=None)
@given(ops=ops, num_blocks=st.integers(1, 24), block_size=st.sampled_from([1, 2, 4]), vocab=st.integers(2, 5))
def test_random_sequences_under_colliding_hashes_share_only_equal_tokens(ops, num_blocks, block_size, vocab):
    """A hash of three values: blocks of different tokens collide all the time; hits still hold equal tokens."""
    def weak(parent: int, tokens) -> int:
        return (parent + sum(tokens)) % 3 + 1

    with mock.patch.object(block_manager, "chain_hash", weak):
        run_sequence(ops, num_blocks, block_size, True, vocab)


def run_sequence(ops, num_blocks: int, block_size: int, prefix: bool, vocab: int) -> None:
    bus = EventBus()
    bm = BlockManager(num_blocks, block_size, prefix, bus)
    live: list[Request] = []
    next_id = 0
    for op, pick, n in ops:
        if op == "new":
            # small vocab and repeated patterns make prefix hits likely
            tokens = [(pick + i // 3) % vocab for i in range(n)]
            req = make_request(next_id, tokens)
            next_id += 1
            hits = bm.find_cached_prefix(req)
            for i, b in enumerate(hits):  # each hit holds the request's tokens at the request's index
                assert bm.block_key[b][::2] == (i, tuple(tokens[i * block_size:(i + 1) * block_size]))
            need_total = -(-req.num_tokens // block_size)
            hit_free = sum(1 for b in hits if bm.ref_counts[b] == 0)
            fits = need_total - len(hits) + hit_free <= bm.num_free_blocks
            got = bm.allocate_slots(req, req.num_tokens - len(hits) * block_size, hits)
            assert (got is not None) == fits
            if not fits:
                assert req.block_table == [] and req.num_computed_tokens == 0
                continue
            if hits:
                assert req.num_computed_tokens == len(hits) * block_size < req.num_tokens
            req.num_computed_tokens = req.num_tokens
            bm.cache_full_blocks(req)
            live.append(req)
        elif op == "grow" and live:
            req = live[pick % len(live)]
            before = list(req.block_table)
            free_before = bm.num_free_blocks
            ok = bm.allocate_slots(req, n) is not None
            if ok:
                req.token_ids.extend([pick % vocab] * n)
                req.num_computed_tokens += n
                bm.cache_full_blocks(req)
                assert req.block_table[: len(before)] == before
                assert len(req.block_table) * block_size >= req.num_computed_tokens
            else:
                assert req.block_table == before and bm.num_free_blocks == free_before
        elif op == "free" and live:
            req = live.pop(pick % len(live))
            bm.free(req)
            assert req.block_table == []
        check_invariants(bm, live)
    for req in live:
        bm.free(req)
    check_invariants(bm, [])
    assert bm.num_free_blocks == num_blocks
    assert sorted(bm.free_queue) == list(range(num_blocks))


def test_prefix_hit_shares_blocks_and_keeps_last_token():
    bm = BlockManager(16, 4, True, EventBus())
    a = make_request(0, list(range(10)))
    assert bm.allocate_slots(a, 10) is not None
    a.num_computed_tokens = 10
    bm.cache_full_blocks(a)
    assert len(bm.hash_to_block) == 2  # two full blocks of 4
    b = make_request(1, list(range(8)) + [99, 98])
    hits = bm.find_cached_prefix(b)
    assert hits == a.block_table[:2]
    assert bm.allocate_slots(b, 2, hits) is not None
    assert bm.ref_counts[hits[0]] == 2 and b.num_computed_tokens == 8
    # a prompt that is exactly two cached blocks must still compute its last token
    c = make_request(2, list(range(8)))
    assert bm.find_cached_prefix(c) == a.block_table[:1]


def test_cached_blocks_survive_free_and_are_evicted_lru_only_when_needed():
    events = EventList()
    bus = EventBus()
    bus.subscribe(events)
    bm = BlockManager(4, 2, True, bus)
    a = make_request(0, [1, 2, 3, 4])
    bm.allocate_slots(a, 4)
    a.num_computed_tokens = 4
    bm.cache_full_blocks(a)
    first, second = a.block_table
    bm.free(a)
    assert bm.cached_block_ids() == {first, second}
    # plain free blocks are used before cached ones
    b = make_request(1, [7, 7, 7, 7])
    bm.allocate_slots(b, 4)
    assert set(b.block_table).isdisjoint({first, second})
    # the next allocation must evict: the chain's tail (freed first) goes before its head
    c = make_request(2, [9, 9])
    bm.allocate_slots(c, 2)
    assert c.block_table == [second]
    assert [e.block_ids for e in events.events if e.what == "evict"] == [(second,)]
    assert bm.find_cached_prefix(make_request(3, [1, 2, 3, 4, 5])) == [first]


def test_chain_hash_depends_on_parent():
    assert chain_hash(0, [1, 2]) != chain_hash(5, [1, 2])
    assert chain_hash(0, [1, 2]) == chain_hash(0, (1, 2))


def test_colliding_hash_is_no_hit_and_stops_the_chain():
    """Every block hashes alike: only a block of equal tokens is shared; a request whose chain meets another
    block's tokens under its hash registers nothing past it, and frees to an exact pool."""
    with mock.patch.object(block_manager, "chain_hash", lambda parent, tokens: 7):
        bm = BlockManager(8, 2, True, EventBus())
        a = make_request(0, [1, 2, 3, 4, 5])
        bm.allocate_slots(a, 5)
        a.num_computed_tokens = 5
        bm.cache_full_blocks(a)
        assert bm.hash_to_block == {7: a.block_table[0]}  # its second block's hash is taken by its first
        b = make_request(1, [9, 9, 3, 4, 5])
        assert bm.find_cached_prefix(b) == []
        assert bm.allocate_slots(b, 5, []) is not None and set(b.block_table).isdisjoint(a.block_table)
        b.num_computed_tokens = 5
        bm.cache_full_blocks(b)
        assert bm.hash_to_block == {7: a.block_table[0]} and b.block_hashes == []
        c = make_request(2, [1, 2, 9])
        assert bm.find_cached_prefix(c) == a.block_table[:1]  # equal tokens still hit
        check_invariants(bm, [a, b])
        first = a.block_table[0]
        bm.free(a)
        bm.free(b)
        check_invariants(bm, [])
        assert bm.num_free_blocks == 8 and bm.cached_block_ids() == {first} and bm.num_cached_free == 1
