"""Speculative decoding on SmolLM2 gives transformers' greedy tokens, for every drafter.

Prompts where prompt lookup helps (the model asked to repeat or continue a pattern it was given) and
ordinary ones, 32 new tokens each, EOS ignored, float32. Configurations: chunked prefill with small chunks
and the prefix cache on, a pool small enough that requests are preempted, block sizes 1 and 16 (drafts then
cross block boundaries: k = 4 drafts from every offset in a 16-slot block). The oracle is Hugging Face
transformers on the same GGUF weights (tests/support/hf_oracle.py).
"""

from __future__ import annotations

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM
from kvscope.engine.model.loader import LoadedModel, load_for_recipe
from support.hf_oracle import hf_greedy

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
BASE = {"model": {"source": "gguf", "path": "smollm2"}, "dtype": "float32", "device": "cpu",
        "attention_backend": "torch", "workload": {"prompts": ["-"]}}
CHATS = [  # the instruct model copies text it was given: prompt lookup's case
    "Repeat the following text exactly, word for word:\n\nThe Industrial Revolution began in Great Britain in "
    "the late eighteenth century and spread to Europe and North America.",
    "Fix the spelling mistakes in this paragraph and return the corrected paragraph only:\n\nThe quik brown fox "
    "jumpd over the lazzy dog. It was a sunny day and the fox was very hapy to be outside in the feilds.",
]
TEXTS = [
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "The capital of France is",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
    "Hi",
]
SPECS = {
    "ngram": {"method": "ngram", "num_speculative_tokens": 4},
    "layerskip": {"method": "layerskip", "num_layers": 6, "num_speculative_tokens": 3},
}
# Drafting costs forward passes: layerskip and the draft model run three prompts (31, 62 and 81 tokens; two
# copy their prompt), 16 tokens each (k 3 drafts still cross 16-slot block boundaries); in 7 blocks the first
# two run together and outgrow the pool.
LAYERSKIP_PROMPTS = (2, 0, 1)
LAYERSKIP_TOKENS = 16
LAYERSKIP_PREEMPTION_BLOCKS = 7
CONFIGS = {
    "chunked, prefix cache": {"cache": {"block_size": 16, "num_blocks": 256, "prefix_caching": True},
                              "scheduler": {"max_num_batched_tokens": 24}},
    "preemption": {"cache": {"block_size": 16, "num_blocks": 9}, "scheduler": {"max_num_batched_tokens": 256}},
    "block size 1": {"cache": {"block_size": 1, "num_blocks": 1024}, "scheduler": {"max_num_batched_tokens": 256}},
}


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_for_recipe(Recipe.from_dict(BASE))


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:
    tok = loaded.tokenizer
    chats = [tok.encode(tok.apply_chat_template([{"role": "user", "content": c}]), add_bos=False) for c in CHATS]
    return chats + [tok.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def expected(prompts) -> list[list[int]]:
    return hf_greedy(prompts, NEW_TOKENS)


def generate(loaded, prompts, config: dict, spec: dict | None, max_tokens: int = NEW_TOKENS):
    data = dict(BASE, **config)
    if spec is not None:
        data["speculative"] = spec
    llm = LLM(Recipe.from_dict(data), loaded=loaded)
    outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    engine = llm.engine
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    return [o.token_ids for o in outs], engine


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", list(SPECS))
def test_greedy_tokens_equal_transformers(loaded, prompts, expected, config, method):
    n, cfg = NEW_TOKENS, CONFIGS[config]
    if method == "layerskip":
        n = LAYERSKIP_TOKENS
        prompts, expected = [prompts[i] for i in LAYERSKIP_PROMPTS], [expected[i][:n] for i in LAYERSKIP_PROMPTS]
        if config == "preemption":
            cfg = dict(cfg, cache={"block_size": 16, "num_blocks": LAYERSKIP_PREEMPTION_BLOCKS})
    got, engine = generate(loaded, prompts, cfg, SPECS[method], n)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"prompt {i} diverges at token {next(j for j in range(len(e)) if g[j] != e[j])}"
    if config == "preemption":
        assert engine.scheduler.num_preemptions > 0


def test_draft_model_equal_transformers(loaded, prompts, expected):
    """The draft model is SmolLM2 itself (the only real model here): every draft is accepted up to numerics."""
    spec = {"method": "draft_model", "num_speculative_tokens": 4, "model": {"source": "gguf", "path": "smollm2"}}
    got, _ = generate(loaded, [prompts[i] for i in LAYERSKIP_PROMPTS], CONFIGS["chunked, prefix cache"], spec,
                      LAYERSKIP_TOKENS)
    assert got == [expected[i][:LAYERSKIP_TOKENS] for i in LAYERSKIP_PROMPTS]


def test_prompt_lookup_accepts_on_repetition(loaded, prompts):
    """Not a speed claim: when the model copies text it was given, most of what prompt lookup drafts is accepted."""
    from kvscope.events.bus import EventList

    data = dict(BASE, **CONFIGS["chunked, prefix cache"], speculative=SPECS["ngram"])
    llm = LLM(Recipe.from_dict(data), loaded=loaded)
    events = EventList()
    llm.engine.bus.subscribe(events)
    llm.generate(prompts[:2], SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    specs = [e for e in events.events if e.kind == "spec_decode"]
    drafted = sum(e.num_draft_tokens for e in specs)
    assert drafted > 0 and sum(e.num_accepted for e in specs) / drafted > 0.5
