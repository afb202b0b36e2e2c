"""The no-KV-cache baseline (cache.kv_cache false): every step recomputes each request's whole prefix, the
greedy tokens are the cached engine's, the computed tokens grow with the square of the length, and the
recipe rules name the field."""

from __future__ import annotations

import random

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM
from kvscope.engine.model.loader import load_for_recipe
from kvscope.errors import RecipeError
from kvscope.events.bus import EventBus
from kvscope.inspector.metrics import Metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"model": {"source": "random", "shape": "tiny", "seed": 5}, "dtype": "float32", "device": "cpu",
        "attention_backend": "torch", "cache": {"block_size": 4, "num_blocks": 128},
        "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 1024, "max_model_len": 128}}


def prompts(n: int = 6, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 250) for _ in range(rng.randrange(3, 40))] for _ in range(n)]


def generate(data: dict, kv_cache: bool, prompt_ids: list[list[int]], max_tokens: int,
             loaded=None) -> tuple[list[list[int]], Metrics]:
    recipe = Recipe.from_dict({**data, "cache": {**data["cache"], "kv_cache": kv_cache},
                               "workload": {"prompts": ["-"]}})
    bus = EventBus()
    metrics = bus.subscribe(Metrics())
    llm = LLM(recipe, loaded=loaded, bus=bus)
    outs = llm.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    return [o.token_ids for o in outs], metrics


def test_same_greedy_tokens_as_the_cached_engine_and_quadratic_work():
    ids = prompts()
    loaded = load_for_recipe(Recipe.from_dict({**TINY, "workload": {"prompts": ["-"]}}))
    n = 20
    cached, m_cached = generate(TINY, True, ids, n, loaded)
    recomputed, m_none = generate(TINY, False, ids, n, loaded)
    assert recomputed == cached
    assert all(len(t) == n for t in cached)
    # cached: each prompt once, then one token per step; no cache: the whole prefix for every token
    assert m_cached.summary().computed_tokens == sum(len(p) + n - 1 for p in ids)
    assert m_none.summary().computed_tokens == sum(n * len(p) + n * (n - 1) // 2 for p in ids)
    assert m_none.summary().steps == m_cached.summary().steps == n


def test_a_short_budget_chunks_the_recompute_and_keeps_the_tokens():
    """Budget below the prefixes: a recompute spreads over steps (and preemption may strike); same tokens."""
    ids = prompts(4, seed=2)
    tight = {**TINY, "scheduler": {**TINY["scheduler"], "max_num_batched_tokens": 24},
             "cache": {**TINY["cache"], "num_blocks": 24}}
    loaded = load_for_recipe(Recipe.from_dict({**TINY, "workload": {"prompts": ["-"]}}))
    cached, _ = generate(tight, True, ids, 16, loaded)
    recomputed, _ = generate(tight, False, ids, 16, loaded)
    assert recomputed == cached


@pytest.mark.parametrize("over,needle", [
    ({"cache": {"kv_cache": False, "prefix_caching": True}}, "cache.prefix_caching: needs kv_cache true"),
    ({"cache": {"kv_cache": False, "allocator": "contiguous"}}, "cache.kv_cache: false (the no-KV-cache baseline) "
                                                                "runs on the paged allocator only"),
    ({"cache": {"kv_cache": False}, "scheduler": {"policy": "static"}}, "cache.kv_cache: false (the no-KV-cache "
                                                                        "baseline) needs scheduler.policy continuous"),
    ({"cache": {"kv_cache": False}, "speculative": {"method": "ngram"}}, "cache.kv_cache: false"),
    ({"cache": {"kv_cache": "no"}}, "cache.kv_cache: must be true or false, got 'no'"),
])
def test_kv_cache_rules_name_the_field(over, needle):
    with pytest.raises(RecipeError, match="^<dict>: " + needle.replace(".", r"\.").replace("(", r"\(")
                       .replace(")", r"\)")):
        Recipe.from_dict({"workload": {"prompts": ["x"]}, **over})


@pytest.mark.slow
def test_smollm2_same_greedy_tokens_without_a_kv_cache():
    real = {**TINY, "model": {"source": "gguf", "path": "smollm2"}, "attention_backend": "auto",
            "scheduler": {**TINY["scheduler"], "max_model_len": 256}, "cache": {"block_size": 16, "num_blocks": 64}}
    loaded = load_for_recipe(Recipe.from_dict({**real, "workload": {"prompts": ["-"]}}))
    text = ["The capital of France is", "def fib(n):\n    ", "Once upon a time, in a small village,"]
    ids = [loaded.tokenizer.encode(t) for t in text]
    cached, _ = generate(real, True, ids, 24, loaded)
    recomputed, _ = generate(real, False, ids, 24, loaded)
    assert recomputed == cached
