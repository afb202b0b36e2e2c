"""Sampler and stop conditions: greedy, temperature, top-k, top-p, seeds, stop tokens / strings, max tokens."""

import math

import pytest
import torch

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM
from kvscope.engine.worker.sampler import sample

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])


def draws(params: SamplingParams, n: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return [sample(LOGITS, [params], [gen])[0] for _ in range(n)]


def test_greedy_and_top_k_one_pick_the_argmax():
    assert draws(SamplingParams(temperature=0.0), 5) == [0] * 5
    assert draws(SamplingParams(temperature=1.5, top_k=1), 50) == [0] * 50


def test_temperature_sampling_follows_softmax():
    n = 4000
    got = draws(SamplingParams(temperature=1.0), n)
    probs = torch.softmax(LOGITS[0], -1).tolist()
    for token, p in enumerate(probs):
        freq = got.count(token) / n
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (token, freq, p)


def test_top_k_and_top_p_restrict_the_support():
    assert set(draws(SamplingParams(temperature=1.0, top_k=2), 400)) == {0, 1}
    # softmax mass: 0.55, 0.20, 0.12, ... -> top_p 0.7 keeps the two most likely tokens
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.7), 400)) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.3), 100)) == {0}


def test_seeds_reproduce_and_differ():
    p = SamplingParams(temperature=2.0)
    assert draws(p, 30, seed=1) == draws(p, 30, seed=1)
    assert draws(p, 30, seed=1) != draws(p, 30, seed=2)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM({"model": {"source": "random", "shape": "tiny-gqa3", "seed": 0},
                "cache": {"block_size": 4, "num_blocks": 128}})


PROMPT = [72, 101, 108, 108, 111, 44, 32, 119]


def test_max_tokens_and_length_reason(llm):
    out = llm.generate([PROMPT], SamplingParams(max_tokens=7, ignore_eos=True))[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"


def test_stop_token_ids_end_the_output_inclusively(llm):
    ref = llm.generate([PROMPT], SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids
    stop_at = ref[4]
    first = ref.index(stop_at)
    out = llm.generate([PROMPT], SamplingParams(max_tokens=12, ignore_eos=True, stop_token_ids=[stop_at]))[0]
    assert out.token_ids == ref[: first + 1] and out.finish_reason == "stop"


def test_stop_strings_cut_the_text(llm):
    ref = llm.generate([PROMPT], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    text = ref.text
    stop = text[5:7]
    out = llm.generate([PROMPT], SamplingParams(max_tokens=12, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.text == text[: text.index(stop)]
    assert stop not in out.text


def test_per_request_seeds_are_independent_of_batch_mates(llm):
    p = SamplingParams(max_tokens=10, temperature=1.0, seed=123, ignore_eos=True)
    alone = llm.generate([PROMPT], p)[0].token_ids
    other = SamplingParams(max_tokens=10, temperature=1.0, seed=7, ignore_eos=True)
    together = llm.generate([PROMPT[:3], PROMPT, PROMPT[2:]], [other, p, other])[1].token_ids
    assert alone == together
