"""vLLM's metric families on `/metrics` beyond the basic ones: the per-request histograms, the prompt-token sources,
the queue and cache-config gauges, and the estimated FLOPs and bytes (tiny random model, one server per module).

Oracles: the responses' usage counts and the request parameters sent; the prefix-cache hit counter for the cached
tokens; the phases' own arithmetic (inference = prefill + decode, TPOT x (tokens - 1) = decode); and for the
estimated work, the engine's kernel events, which price the same steps from the scheduler's state (not from the
event stream the metrics fold reads).
"""

from __future__ import annotations

import math

import openai
import pytest

from kvscope.engine.llm import as_recipe
from kvscope.events.vocabulary import Kind
from kvscope.serve.server.api_server import ServeOptions, ServerThread
from kvscope.serve.server.metrics import request_token_buckets
from support.scrape import engine_idle, metric, metrics
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 96, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256, "max_model_len": 128},
          "sampling": {"temperature": 0.0}}

VLLM_FAMILIES = (  # every family of vLLM 0.32 that the issue lists as missing, by its exposition sample name
    "vllm:request_queue_time_seconds_bucket", "vllm:request_prefill_time_seconds_bucket",
    "vllm:request_decode_time_seconds_bucket", "vllm:request_inference_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket",
    "vllm:request_max_num_generation_tokens_bucket", "vllm:request_params_n_bucket",
    "vllm:request_params_max_tokens_bucket", "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:request_num_preemptions_bucket", "vllm:request_prefill_kv_computed_tokens_bucket",
    "vllm:prompt_tokens_cached_total", "vllm:prompt_tokens_by_source_total",
    "vllm:prompt_tokens_cached_by_source_total", "vllm:admission_rejections_total",
    "vllm:num_requests_waiting_by_reason", "vllm:cache_config_info", "vllm:estimated_flops_per_gpu_total",
    "vllm:estimated_read_bytes_per_gpu_total", "vllm:estimated_write_bytes_per_gpu_total")


@pytest.fixture(scope="module")
def served():
    """A server with kernel events on, and every kernel event of its engine collected."""
    kernels: list = []

    def collect(engine, bus) -> None:
        bus.subscribe(lambda ev: kernels.append(ev) if ev.kind == Kind.KERNEL else None)

    with ServerThread(as_recipe(RECIPE), ServeOptions(port=0, kernel_events=True, on_engine=collect)) as srv:
        yield srv, openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30), kernels


def test_every_listed_vllm_family_is_exported_and_spec_decode_only_when_speculating(served):
    srv, client, _ = served
    client.completions.create(model="tiny", prompt="families", max_tokens=3)
    m = metrics(srv.url)
    names = {n for n, _ in m}
    for name in VLLM_FAMILIES:
        assert name in names, name
    assert not any(n.startswith("vllm:spec_decode") for n in names)  # no speculation configured
    assert ("vllm:admission_rejections_total", (("model_name", "tiny"), ("reason", "max_num_queued_reqs"))) in m
    info = [ls for n, ls in m if n == "vllm:cache_config_info"]
    assert len(info) == 1 and ("block_size", "4") in info[0] and ("num_gpu_blocks", "96") in info[0]
    assert ("enable_prefix_caching", "True") in info[0] and ("engine", "0") in info[0]
    buckets = sorted(float(dict(ls)["le"]) for n, ls in m if n == "vllm:request_prompt_tokens_bucket")
    assert buckets[:-1] == list(request_token_buckets(128)) == [1, 2, 5, 10, 20, 50, 100] and math.isinf(buckets[-1])


def test_per_request_histograms_add_up_to_what_was_asked_and_answered(served):
    srv, client, _ = served
    before = metrics(srv.url)
    prompt = "the same prompt twice, long enough to fill blocks"
    outs = [client.completions.create(model="tiny", prompt=prompt, max_tokens=n, extra_body={"ignore_eos": True})
            for n in (5, 7)]
    assert wait_until(lambda: engine_idle(srv), 10.0)
    after = metrics(srv.url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    prompt_tokens = sum(o.usage.prompt_tokens for o in outs)
    assert delta("vllm:request_prompt_tokens_count") == 2
    assert delta("vllm:request_prompt_tokens_sum") == prompt_tokens
    assert delta("vllm:request_generation_tokens_sum") == 12 == delta("vllm:request_max_num_generation_tokens_sum")
    assert delta("vllm:request_params_max_tokens_sum") == 12
    assert delta("vllm:request_params_n_sum") == 2 and delta("vllm:request_num_preemptions_sum") == 0
    hits = delta("vllm:prefix_cache_hits_total")
    assert hits > 0  # the second request's full blocks came from the cache
    assert delta("vllm:prompt_tokens_cached_total") == hits == delta("vllm:prompt_tokens_by_source_total",
                                                                      source="local_cache_hit")
    assert delta("vllm:prompt_tokens_cached_by_source_total", source="device") == hits
    assert delta("vllm:prompt_tokens_by_source_total") == prompt_tokens == delta("vllm:prompt_tokens_total")
    assert delta("vllm:request_prefill_kv_computed_tokens_sum") == prompt_tokens - hits
    inference, prefill, decode = (delta(f"vllm:request_{p}_time_seconds_sum") for p in ("inference", "prefill",
                                                                                        "decode"))
    assert inference == pytest.approx(prefill + decode) and decode > 0
    # arrival -> scheduled -> last token (the finish): the phases tile the e2e latency
    assert delta("vllm:request_queue_time_seconds_sum") + inference == \
        pytest.approx(delta("vllm:e2e_request_latency_seconds_sum"), rel=1e-6)
    # TPOT = decode / (tokens - 1): the two requests' TPOTs times 4 and 6 add up to their decode times
    tpot = delta("vllm:request_time_per_output_token_seconds_sum")
    assert delta("vllm:request_time_per_output_token_seconds_count") == 2
    assert 4 * tpot * (1 - 1e-6) <= decode <= 6 * tpot * (1 + 1e-6)
    assert metric(after, "vllm:num_requests_waiting_by_reason", reason="capacity") == \
        metric(after, "vllm:num_requests_waiting")


def test_estimated_flops_and_bytes_equal_the_engines_kernel_pricing_of_the_same_steps(served):
    srv, client, kernels = served
    assert wait_until(lambda: engine_idle(srv), 10.0)
    before, mark = metrics(srv.url), len(kernels)
    for prompt in ("price me", "a longer prompt that takes a few blocks of the cache", "x"):
        client.completions.create(model="tiny", prompt=prompt, max_tokens=6, extra_body={"ignore_eos": True})
    assert wait_until(lambda: engine_idle(srv), 10.0)
    after = metrics(srv.url)
    new = [k for k in kernels[mark:] if k.op != "sample"]  # sampling is not a forward op (vLLM counts none)
    flops = metric(after, "vllm:estimated_flops_per_gpu_total") - metric(before, "vllm:estimated_flops_per_gpu_total")
    read = metric(after, "vllm:estimated_read_bytes_per_gpu_total") - \
        metric(before, "vllm:estimated_read_bytes_per_gpu_total")
    written = metric(after, "vllm:estimated_write_bytes_per_gpu_total") - \
        metric(before, "vllm:estimated_write_bytes_per_gpu_total")
    assert flops == sum(k.flops for k in new) > 0
    assert read + written == sum(k.bytes for k in new) and 0 < written < read
