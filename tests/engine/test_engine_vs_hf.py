"""Greedy tokens from the engine equal Hugging Face transformers' on the same SmolLM2 GGUF weights.

Eight prompts of different lengths, 32 new tokens each (EOS ignored, so every
token is compared), float32, in every scheduling configuration that changes
how the work is cut up: one batch, small prefill chunks, a pool so small that
requests are preempted and recomputed, block sizes 1 and 16, the static policy,
and prefix caching with shared prefixes.
"""

from __future__ import annotations

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM
from kvscope.engine.model.loader import LoadedModel, load_for_recipe
from support.hf_oracle import hf_greedy

pytestmark = pytest.mark.slow  # the real SmolLM2 weights, and transformers as the oracle

NEW_TOKENS = 32
BASE = {"model": {"source": "gguf", "path": "smollm2"}, "dtype": "float32", "device": "cpu",
        "attention_backend": "torch", "workload": {"prompts": ["-"]}}

TEXTS = [
    "Hi",
    "The capital of France is",
    "List three prime numbers:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
    "Translate to French: The weather is lovely today and we are going to the beach with our friends.",
    "Q: What is the boiling point of water at sea level in Celsius?\nA:",
    "In computer science, a cache is a hardware or software component that stores data so that future "
    "requests for that data can be served faster; the data stored in a cache might be the result of an "
    "earlier computation or a copy of data stored elsewhere. A cache hit occurs when",
    "1, 2, 3, 4, 5,",
]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_for_recipe(Recipe.from_dict(BASE))


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:
    tok = loaded.tokenizer
    out = [tok.encode(t) for t in TEXTS]
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    out.append(tok.encode(chat, add_bos=False))
    return out


@pytest.fixture(scope="module")
def expected(prompts) -> list[list[int]]:
    return hf_greedy(prompts, NEW_TOKENS)


def run_engine(loaded, prompts, **sections):
    data = dict(BASE)
    data.update(sections)
    llm = LLM(Recipe.from_dict(data), loaded=loaded)
    outs = llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    return [o.token_ids for o in outs], llm.engine


def assert_same(got, expected, prompts):
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"prompt {i} ({len(prompts[i])} tokens) diverges at token " \
                       f"{next(j for j in range(len(e)) if g[j] != e[j])}"


def test_prompts_have_varied_lengths(prompts):
    lengths = sorted(len(p) for p in prompts)
    assert len(prompts) >= 8 and lengths[0] <= 3 and lengths[-1] >= 50


def test_one_batch(loaded, prompts, expected):
    got, _ = run_engine(loaded, prompts, cache={"block_size": 16, "num_blocks": 256},
                        scheduler={"max_num_batched_tokens": 4096, "max_num_seqs": 16})
    assert_same(got, expected, prompts)


def test_chunked_prefill_small_chunks(loaded, prompts, expected):
    got, _ = run_engine(loaded, prompts, cache={"block_size": 16, "num_blocks": 256},
                        scheduler={"max_num_batched_tokens": 12, "chunked_prefill": True})
    assert_same(got, expected, prompts)
    assert max(len(p) for p in prompts) > 12  # most prompts really were cut into chunks


def test_preemption_by_recompute(loaded, prompts, expected):
    got, engine = run_engine(loaded, prompts, cache={"block_size": 16, "num_blocks": 10},
                             scheduler={"max_num_batched_tokens": 512})
    assert engine.scheduler.num_preemptions > 0
    assert_same(got, expected, prompts)


def test_block_size_one(loaded, prompts, expected):
    got, _ = run_engine(loaded, prompts, cache={"block_size": 1, "num_blocks": 2048},
                        scheduler={"max_num_batched_tokens": 256})
    assert_same(got, expected, prompts)


def test_static_policy(loaded, prompts, expected):
    got, _ = run_engine(loaded, prompts, cache={"block_size": 16, "num_blocks": 256},
                        scheduler={"policy": "static", "max_num_seqs": 4})
    assert_same(got, expected, prompts)


def test_prefix_caching_on_matches_off(loaded, prompts, expected):
    """Same tokens with the prefix cache on, with shared prefixes ending mid-block and cached blocks
    reused by requests that arrive after the first ones finished."""
    shared = prompts[7]  # the long prompt: 3+ full blocks of 16
    variants = [shared[:k] + p for k, p in ((37, prompts[1]), (48, prompts[2]), (37, prompts[6]))]
    first_wave = variants[:2]
    base = {"cache": {"block_size": 16, "num_blocks": 256, "prefix_caching": True},
            "scheduler": {"max_num_batched_tokens": 128}}
    data = dict(BASE, **base)
    llm = LLM(Recipe.from_dict(data), loaded=loaded)
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    out1 = llm.generate(first_wave, params)
    out2 = llm.generate([variants[2], shared], params)  # arrive after the first wave finished
    got = [o.token_ids for o in out1 + out2]
    assert sum(o.num_cached_tokens for o in out2) >= 32  # blocks freed by the first wave were reused
    assert out1[1].num_cached_tokens >= 32 or out2[0].num_cached_tokens >= 32
    ref = hf_greedy(first_wave + [variants[2], shared], NEW_TOKENS)
    assert_same(got, ref, first_wave + [variants[2], shared])
