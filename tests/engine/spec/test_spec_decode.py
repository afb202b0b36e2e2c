"""Speculative decoding on the tiny random model: exact outputs, block-level rollback, the event stream.

The oracle for outputs is the same engine without speculation (itself checked against transformers in
test_engine_vs_hf); drafters whose acceptance is known exactly (tests/support/spec_drafters.py) pin down the
scheduler's reservation and rollback for every first-rejected position and every slot offset in a block.
After every step: ref counts equal the block tables' counts, no hashed block holds an uncommitted slot,
the block events alone rebuild the tables and the free pool, and each request's committed K/V equals
the K/V the run without speculation wrote for the same tokens.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import LoadedModel, load_for_recipe
from kvscope.engine.spec.drafter import lookup
from kvscope.events.bus import EventList
from kvscope.events.vocabulary import SPEC_ALLOC, SPEC_ROLLBACK
from kvscope.inspector.state import EngineView
from support.spec_drafters import ScriptedDrafter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"model": {"source": "random", "shape": "tiny", "seed": 3}, "dtype": "float32", "device": "cpu",
        "attention_backend": "torch", "workload": {"prompts": ["-"]}}
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_for_recipe(Recipe.from_dict(BASE))


def prompts(n: int = 6, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 200) for _ in range(rng.randrange(1, 30))] for _ in range(n)]


def recipe(block_size: int, num_blocks: int, spec: dict | None = None, **scheduler) -> Recipe:
    data = copy.deepcopy(BASE)
    data["cache"] = {"block_size": block_size, "num_blocks": num_blocks, "prefix_caching": True}
    data["scheduler"] = {"max_num_batched_tokens": 64, **scheduler}
    if spec is not None:
        data["speculative"] = spec
    return Recipe.from_dict(data)


def committed_kv(engine: LLMEngine, req) -> torch.Tensor:
    """K and V of the request's committed tokens, gathered through its block table: [layers, 2, n, kvh, hd]."""
    n, bs = req.num_computed_tokens, engine.block_size
    table = torch.tensor(req.block_table[: -(-n // bs)], dtype=torch.long)
    per_layer = [torch.stack([k[table].flatten(0, 1)[:n], v[table].flatten(0, 1)[:n]])
                 for k, v in engine.kv_cache.layers()]
    return torch.stack(per_layer)


def run(loaded, rec: Recipe, batch: list[list[int]], drafter=None, reference_kv=None, record_kv=None):
    """Run `batch` to the end, checking the invariants after every step. Returns the outputs and the engine."""
    engine = LLMEngine(rec, loaded=loaded)
    if drafter is not None:
        engine.drafter = drafter
    view, events = EngineView(), EventList()
    engine.bus.subscribe(view)
    engine.bus.subscribe(events)
    ids = [engine.add_request(p, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)) for p in batch]
    bm, bs = engine.block_manager, engine.block_size
    while engine.has_unfinished():
        engine.step()
        live = [r for r in engine.scheduler.running if r.block_table]
        counts = [0] * bm.num_blocks
        for r in live:
            for b in r.block_table:
                counts[b] += 1
            for i, b in enumerate(r.block_table):
                if bm.block_hash[b]:
                    assert (i + 1) * bs <= r.num_computed_tokens, "a hashed block holds an uncommitted slot"
            assert len(r.block_table) <= -(-(r.num_tokens) // bs), "a block without a committed token is kept"
            assert not r.spec_token_ids
        assert counts == bm.ref_counts
        assert view.tables == {r.request_id: r.block_table for r in live}
        assert view.block_refs == bm.ref_counts
        assert view.free_blocks() == bm.free_block_ids()
        for r in live:
            kv = committed_kv(engine, r)
            if record_kv is not None:
                record_kv[r.request_id] = kv.clone()
            if reference_kv is not None and r.request_id in reference_kv:
                ref = reference_kv[r.request_id]
                n = min(kv.shape[2], ref.shape[2])
                torch.testing.assert_close(kv[:, :, :n], ref[:, :, :n], atol=1e-5, rtol=1e-4)
    assert bm.num_free_blocks == bm.num_blocks, "blocks leaked"
    return [engine.output(i).token_ids for i in ids], engine, events


CONFIGS = {
    "block size 1": {"block_size": 1, "num_blocks": 512},
    "block size 4": {"block_size": 4, "num_blocks": 128},
    "block size 16": {"block_size": 16, "num_blocks": 32},
    "small chunks": {"block_size": 4, "num_blocks": 128, "max_num_batched_tokens": 8},
    "preempting pool": {"block_size": 4, "num_blocks": 22},
}


@pytest.fixture(scope="module")
def references(loaded):
    """Per config: outputs and K/V of the run without speculation."""
    out = {}
    batch = prompts()
    for name, cfg in CONFIGS.items():
        kv: dict[int, torch.Tensor] = {}
        tokens, engine, _ = run(loaded, recipe(**cfg), batch, record_kv=kv)
        out[name] = (tokens, kv, engine.scheduler.num_preemptions)
    return batch, out


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", ["ngram", "right", "wrong", "wrong_at_0", "wrong_at_1", "wrong_at_2"])
def test_outputs_kv_and_tables_match_the_run_without_speculation(loaded, references, config, method):
    batch, refs = references
    expected, ref_kv, ref_preemptions = refs[config]
    k = 3
    cfg = CONFIGS[config]
    drafter = None
    if method != "ngram":
        wrong_at = int(method.rsplit("_", 1)[1]) if method.startswith("wrong_at") else None
        drafter = ScriptedDrafter(dict(enumerate(expected)), loaded.config.vocab_size, wrong_at=wrong_at,
                                  always_wrong=method == "wrong", block_size=cfg["block_size"])
    rec = recipe(**cfg, spec={"method": "ngram", "num_speculative_tokens": k})
    got, engine, events = run(loaded, rec, batch, drafter=drafter, reference_kv=ref_kv)
    assert got == expected
    specs = [e for e in events.events if e.kind == "spec_decode"]
    assert specs, "nothing was drafted"
    if drafter is not None:
        for e in specs:
            assert e.num_accepted == drafter.expected_accepted(e.num_draft_tokens)
            assert e.first_rejected == (e.num_accepted if e.num_accepted < e.num_draft_tokens else -1)
    if config == "preempting pool":
        assert engine.scheduler.num_preemptions > 0 and ref_preemptions > 0
    if method in ("wrong", "wrong_at_0") and config != "block size 1":
        kinds = {e.what for e in events.events if e.kind == "block"}
        assert {SPEC_ALLOC, SPEC_ROLLBACK} <= kinds


@pytest.mark.parametrize("wrong_at", [0, 1, 2, 3, 4])
def test_right_except_at_j_covers_every_slot_offset_in_a_block(loaded, wrong_at):
    """k = 4 drafts, block size 4: with prompts of every length mod 4 the first draft's slot falls at every
    offset inside a block, and a rejection at j leaves the run's tokens and tables exact."""
    batch = [[5 + i] * (1 + i) for i in range(8)]
    base = recipe(block_size=4, num_blocks=128)
    expected, _, _ = run(loaded, base, batch)
    drafter = ScriptedDrafter(dict(enumerate(expected)), loaded.config.vocab_size, wrong_at=wrong_at, block_size=4)
    got, _, events = run(loaded, recipe(block_size=4, num_blocks=128, spec={"method": "ngram",
                                                                           "num_speculative_tokens": 4}),
                         batch, drafter=drafter)
    assert got == expected
    assert {off for off, n in drafter.offsets if n == 4} == {0, 1, 2, 3}
    specs = [e for e in events.events if e.kind == "spec_decode"]
    assert all(e.num_accepted == min(wrong_at, e.num_draft_tokens) for e in specs)


def test_drafts_never_exceed_max_tokens_and_k_adapts(loaded):
    batch = prompts(4, seed=5)
    expected, _, _ = run(loaded, recipe(block_size=4, num_blocks=128), batch)
    drafter = ScriptedDrafter(dict(enumerate(expected)), loaded.config.vocab_size, wrong_at=None, block_size=4)
    rec = recipe(block_size=4, num_blocks=128, spec={"method": "ngram", "num_speculative_tokens": 2,
                                                     "adaptive": True, "max_speculative_tokens": 6})
    got, _, events = run(loaded, rec, batch, drafter=drafter)
    assert got == expected and all(len(t) == MAX_TOKENS for t in got)
    slots = [e.num_draft_slots for e in events.events if e.kind == "spec_decode"]
    assert max(slots) == 6 and slots[0] == 2  # grew by 2 after each fully accepted step, up to the cap


def test_adaptive_k_shrinks_on_rejection(loaded):
    batch = prompts(2, seed=6)
    expected, _, _ = run(loaded, recipe(block_size=4, num_blocks=128), batch)
    drafter = ScriptedDrafter(dict(enumerate(expected)), loaded.config.vocab_size, always_wrong=True, block_size=4)
    rec = recipe(block_size=4, num_blocks=128, spec={"method": "ngram", "num_speculative_tokens": 4, "adaptive": True})
    got, _, events = run(loaded, rec, batch, drafter=drafter)
    assert got == expected
    slots = [e.num_draft_slots for e in events.events if e.kind == "spec_decode" and e.request_id == 0]
    assert slots[:4] == [4, 3, 2, 1] and set(slots[4:]) <= {1}


def test_stop_token_inside_an_accepted_run_ends_the_request_there(loaded):
    batch = prompts(3, seed=7)
    expected, _, _ = run(loaded, recipe(block_size=4, num_blocks=128), batch)
    stop = expected[0][5]
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, stop_token_ids=[stop])
    ref = LLMEngine(recipe(block_size=4, num_blocks=128), loaded=loaded)
    spec = LLMEngine(recipe(block_size=4, num_blocks=128, spec={"method": "ngram", "num_speculative_tokens": 4}),
                     loaded=loaded)
    spec.drafter = ScriptedDrafter(dict(enumerate(expected)), loaded.config.vocab_size, block_size=4)
    outs = []
    for engine in (ref, spec):
        ids = [engine.add_request(p, params) for p in batch]
        while engine.has_unfinished():
            engine.step()
        outs.append([engine.output(i).token_ids for i in ids])
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert outs[0] == outs[1]
    assert outs[1][0][-1] == stop and len(outs[1][0]) == expected[0].index(stop) + 1


def test_prompt_lookup_finds_the_latest_longest_match():
    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2, 1, 3) == [7, 1]
    assert lookup([1, 2, 3, 4, 5, 2, 3], 3, 1, 3) == [4, 5, 2]
    assert lookup([4, 1, 8, 2], 3, 1, 3) == []
    assert lookup([5, 5, 5], 4, 2, 2) == [5]       # the continuation may run into the suffix itself
    assert lookup([7, 7, 7, 7, 7, 7], 3, 1, 1) == [7, 7, 7]  # the latest occurrence followed by k tokens
    assert lookup([1, 2, 1, 3, 1], 2, 2, 3) == []  # no 2-gram suffix occurred before
    assert lookup([1, 2, 1, 3, 1], 2, 1, 3) == [3, 1]


@pytest.mark.parametrize("config", ["block size 1", "block size 4", "preempting pool"])
def test_layerskip_outputs_kv_and_tables_match(loaded, references, config):
    batch, refs = references
    expected, ref_kv, _ = refs[config]
    rec = recipe(**CONFIGS[config], spec={"method": "layerskip", "num_layers": 1, "num_speculative_tokens": 3})
    got, _, events = run(loaded, rec, batch, reference_kv=ref_kv)
    assert got == expected
    assert any(e.kind == "spec_decode" and e.method == "layerskip" for e in events.events)


def test_layerskip_sampled_requests_keep_their_draft_distributions(loaded):
    rec = recipe(block_size=4, num_blocks=128, spec={"method": "layerskip", "num_layers": 1,
                                                     "num_speculative_tokens": 2})
    engine = LLMEngine(rec, loaded=loaded)
    seen = []
    propose = engine.drafter.propose

    def watch(drafting):
        propose(drafting)
        seen.extend(s.request.draft_probs for s in drafting)

    engine.drafter.propose = watch
    engine.add_request([3, 4, 5], SamplingParams(max_tokens=8, temperature=0.8, seed=1))
    while engine.has_unfinished():
        engine.step()
    assert seen and all(q is not None and q.shape[1] == loaded.config.vocab_size for q in seen)
    assert all(torch.allclose(q.sum(-1), torch.ones(len(q))) for q in seen)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.parametrize("draft_seed", [3, 11])
def test_draft_model_outputs_kv_and_tables_match(loaded, references, draft_seed):
    """A draft model with its own pool: the target's own weights (seed 3) accept every draft; other weights
    (seed 11) accept fewer. Either way the output is the target's."""
    batch, refs = references
    expected, ref_kv, _ = refs["preempting pool"]
    spec = {"method": "draft_model", "num_speculative_tokens": 3,
            "model": {"source": "random", "shape": "tiny", "seed": draft_seed}}
    got, engine, events = run(loaded, recipe(**CONFIGS["preempting pool"], spec=spec), batch, reference_kv=ref_kv)
    assert got == expected
    specs = [e for e in events.events if e.kind == "spec_decode"]
    accepted = sum(e.num_accepted for e in specs) / sum(e.num_draft_tokens for e in specs)
    if draft_seed == 3:
        assert accepted == 1.0
    else:
        assert accepted < 1.0
    drafter = engine.drafter
    drafter.propose([])  # frees the shadows of finished requests
    assert drafter.blocks.num_free_blocks == drafter.blocks.num_blocks
