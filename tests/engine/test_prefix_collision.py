"""A prefix-cache hash collision never hands one request another's K/V (issue 28, item 5; cf. CVE-2025-25183).

chain_hash is patched so that request B's first block hashes like request A's (B's later blocks equal A's, so B's
whole chain of hashes is A's): B must find no prefix hit, get blocks of its own, leave ref counts and the free pool
exact, and produce the tokens it produces on an engine of its own. A prompt equal to A's still hits under the
same patch (the patch is in effect; equal tokens are still shared)."""

from __future__ import annotations

import random

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core import block_manager
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import load_for_recipe
from kvscope.events.bus import EventList
from kvscope.events.vocabulary import ALLOC, CACHED, PREFIX_HIT

BS = 4
RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 5}, "dtype": "float32", "device": "cpu",
          "attention_backend": "torch", "workload": {"prompts": ["-"]},
          "cache": {"block_size": BS, "num_blocks": 32, "prefix_caching": True},
          "scheduler": {"max_num_batched_tokens": 64}}
# the tiny model's greedy token is the last one again whatever came before; sampled hot, with a seed, its tokens
# follow the context (B's differ from A's), so B's output shows whose K/V it attended to
SAMPLED = SamplingParams(max_tokens=12, ignore_eos=True, temperature=16.0, seed=1)

rng = random.Random(28)
PROMPT_A = [rng.randrange(10, 250) for _ in range(13)]  # three full blocks and one token
PROMPT_B = [t + 1 for t in PROMPT_A[:BS]] + PROMPT_A[BS:]  # another first block, the rest A's


@pytest.fixture(scope="module")
def loaded(one_torch_thread):
    return load_for_recipe(Recipe.from_dict(RECIPE))


@pytest.fixture
def colliding(monkeypatch):
    """B's first block hashes as A's first block does, so every block of B's chain hashes as A's."""
    real = block_manager.chain_hash
    first_a, first_b = tuple(PROMPT_A[:BS]), tuple(PROMPT_B[:BS])

    def chain_hash(parent: int, tokens) -> int:
        return real(parent, first_a if parent == 0 and tuple(tokens) == first_b else tokens)

    monkeypatch.setattr(block_manager, "chain_hash", chain_hash)
    return chain_hash


def generate(engine: LLMEngine, prompt: list[int]) -> tuple[int, list[int]]:
    rid = engine.add_request(list(prompt), SAMPLED)
    out = None
    for _ in range(50):
        if not engine.has_unfinished():
            break
        for o in engine.step():
            out = o
    assert out is not None and out.request_id == rid and not engine.has_unfinished()
    return rid, out.token_ids


def block_events(events: EventList, what: str, rid: int) -> list:
    return [e for e in events.events if getattr(e, "what", "") == what and e.request_id == rid]


def test_a_colliding_prompt_gets_no_other_requests_blocks(loaded, colliding):
    def chain(prompt: list[int]) -> list[int]:
        hashes, parent = [], 0
        for i in range(len(prompt) // BS):
            parent = colliding(parent, prompt[i * BS:(i + 1) * BS])
            hashes.append(parent)
        return hashes

    assert chain(PROMPT_A) == chain(PROMPT_B)  # the collision the patch forces: the old lookup hit all 3 blocks

    alone = LLMEngine(Recipe.from_dict(RECIPE), loaded=loaded)
    _, b_alone = generate(alone, PROMPT_B)

    engine = LLMEngine(Recipe.from_dict(RECIPE), loaded=loaded)
    events = engine.bus.subscribe(EventList())
    bm = engine.block_manager
    a_id, a_out = generate(engine, PROMPT_A)
    a_cached = {b for e in block_events(events, CACHED, a_id) for b in e.block_ids}
    assert a_out != b_alone  # the output shows which first block the K/V came from
    assert len(a_cached) == 6 and bm.cached_block_ids() == a_cached  # 24 tokens computed: 6 full blocks

    b_id = engine.add_request(list(PROMPT_B), SAMPLED)
    engine.step()  # B admitted and prefilled
    b_req = engine.requests[b_id]
    assert not block_events(events, PREFIX_HIT, b_id) and b_req.num_cached_tokens == 0
    assert set(b_req.block_table).isdisjoint(a_cached)
    assert [b for e in block_events(events, ALLOC, b_id) for b in e.block_ids] == b_req.block_table
    assert all(bm.ref_counts[b] == 1 for b in b_req.block_table)
    assert all(bm.ref_counts[b] == 0 for b in a_cached) and bm.cached_block_ids() == a_cached
    assert bm.num_free_blocks == bm.num_blocks - len(b_req.block_table)

    outputs = {}
    while engine.has_unfinished():
        outputs.update((o.request_id, o) for o in engine.step())
    assert outputs[b_id].token_ids == b_alone and outputs[b_id].num_cached_tokens == 0
    assert not block_events(events, CACHED, b_id)  # its chain met a colliding block: nothing of it is cached
    assert all(r == 0 for r in bm.ref_counts) and bm.num_free_blocks == bm.num_blocks
    assert bm.cached_block_ids() == a_cached and bm.num_cached_free == len(a_cached)
    for e in block_events(events, CACHED, a_id):  # one block each, at its logical index
        (b,) = e.block_ids
        index, _, tokens = bm.block_key[b]
        assert index == e.logical_index and tokens == tuple((PROMPT_A + a_out)[index * BS:(index + 1) * BS])


def test_equal_tokens_still_hit_under_the_same_patch(loaded, colliding):
    engine = LLMEngine(Recipe.from_dict(RECIPE), loaded=loaded)
    events = engine.bus.subscribe(EventList())
    a_id, a_tokens = generate(engine, PROMPT_A)
    a_cached = [b for e in block_events(events, CACHED, a_id) for b in e.block_ids]
    c_id, c_tokens = generate(engine, PROMPT_A)
    (hit,) = block_events(events, PREFIX_HIT, c_id)
    assert list(hit.block_ids) == a_cached[:3] and c_tokens == a_tokens  # never the prompt's last token
    assert engine.output(c_id).num_cached_tokens == 3 * BS
    assert all(r == 0 for r in engine.block_manager.ref_counts)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
