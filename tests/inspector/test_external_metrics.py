"""vLLM's /metrics folded into the metrics view: histogram quantiles from bucket deltas against the samples
they were drawn from, today's names and the older gpu_* ones from hand-written expositions, counter resets."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvscope.inspector.external.prometheus import histogram_of, parse_exposition
from kvscope.inspector.external.vllm_metrics import Scrape, ScrapeFailed, VLLMMetrics, has_vllm_metrics
from kvscope.inspector.metrics import percentile

# vLLM 0.32's buckets for vllm:time_to_first_token_seconds
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]


def _bucket_width(bounds: list[float], value: float) -> float:
    edges = [0.0, *sorted(bounds)]
    for lo, hi in itertools.pairwise(edges):
        if value <= hi:
            return hi - lo
    return math.inf


def test_quantiles_from_bucket_deltas_are_within_a_bucket_of_the_samples():
    rng = random.Random(7)
    early = [rng.expovariate(1 / 2.0) for _ in range(800)]  # before attach: a slow phase
    later = [rng.lognormvariate(math.log(0.07), 0.6) for _ in range(3000)]  # since attach
    registry = CollectorRegistry()
    h = Histogram("vllm:time_to_first_token_seconds", "ttft", ["model_name"], buckets=TTFT_BUCKETS,
                  registry=registry)
    for v in early:
        h.labels("m").observe(v)
    before = parse_exposition(generate_latest(registry).decode())
    for v in later:
        h.labels("m").observe(v)
    after = parse_exposition(generate_latest(registry).decode())
    delta = after.histogram("vllm:time_to_first_token_seconds").minus(
        before.histogram("vllm:time_to_first_token_seconds"))
    assert delta.count == len(later)
    assert delta.mean == pytest.approx(math.fsum(later) / len(later), rel=1e-9)
    xs = sorted(later)
    for q in (0.1, 0.5, 0.9, 0.99):
        true = percentile(xs, q * 100)
        est = delta.quantile(q)
        assert est is not None and abs(est - true) <= _bucket_width(TTFT_BUCKETS, true), (q, est, true)


def test_quantile_edges():
    h = histogram_of([0.5] * 10 + [50.0], [1.0, 2.0])  # one sample beyond the last finite bound
    assert h.count == 11 and h.quantile(0.5) == pytest.approx(0.55)  # rank 5.5 of 10 in (0, 1]
    assert h.quantile(1.0) == 2.0  # in the +Inf bucket: the highest finite bound, as Prometheus answers
    assert histogram_of([], [1.0]).quantile(0.5) is None
    restarted = histogram_of([0.1], [1.0])
    assert restarted.minus(h) is restarted  # counts went down: the server restarted, nothing to subtract


def _registry_now(kv: float, queries: float, hits: float, gen: float, finished: dict[str, float],
                  ttft: list[float]):
    r = CollectorRegistry()
    labels = ["model_name", "engine"]
    Gauge("vllm:num_requests_running", "", labels, registry=r).labels("m", "0").set(2)
    Gauge("vllm:num_requests_waiting", "", labels, registry=r).labels("m", "0").set(5)
    Gauge("vllm:kv_cache_usage_perc", "", labels, registry=r).labels("m", "0").set(kv)
    Counter("vllm:prefix_cache_queries", "", labels, registry=r).labels("m", "0").inc(queries)
    Counter("vllm:prefix_cache_hits", "", labels, registry=r).labels("m", "0").inc(hits)
    Counter("vllm:num_preemptions", "", labels, registry=r).labels("m", "0").inc(1)
    Counter("vllm:generation_tokens", "", labels, registry=r).labels("m", "0").inc(gen)
    Counter("vllm:prompt_tokens", "", labels, registry=r).labels("m", "0").inc(gen * 4)
    success = Counter("vllm:request_success", "", [*labels, "finished_reason"], registry=r)
    for reason, n in finished.items():
        success.labels("m", "0", reason).inc(n)
    h = Histogram("vllm:time_to_first_token_seconds", "", labels, buckets=TTFT_BUCKETS, registry=r)
    for v in ttft:
        h.labels("m", "0").observe(v)
    info = Gauge("vllm:cache_config_info", "", ["block_size", "num_gpu_blocks", "enable_prefix_caching"],
                 registry=r)
    info.labels("32", "1390", "True").set(1)
    return parse_exposition(generate_latest(r).decode())


def test_todays_names_since_attach_and_in_all():
    m = VLLMMetrics()
    m.take(Scrape(0.0, _registry_now(0.1, 100, 40, 50, {"length": 2}, [0.05] * 3)))
    r = m.take(Scrape(2.0, _registry_now(0.25, 300, 140, 250, {"length": 5, "stop": 1}, [0.05] * 3 + [0.3] * 4)))
    assert r is not None and r.naming == "current" and r.scrapes == 2
    assert (r.running, r.waiting, r.kv_usage) == (2, 5, 0.25)
    assert r.prefix_hit_rate == pytest.approx(100 / 200) and r.prefix_hit_rate_total == pytest.approx(140 / 300)
    assert (r.generation_tokens, r.generation_tokens_total) == (200, 250)
    assert r.generation_tok_s == pytest.approx(100.0) and r.prompt_tok_s == pytest.approx(400.0)
    assert (r.finished, r.finished_total) == (4, 6) and r.finished_by_reason == {"length": 3, "stop": 1}
    assert (r.preemptions, r.preemptions_total) == (0, 1)
    ttft = r.latency["ttft"]
    assert ttft is not None and ttft.count == 4 and ttft.mean == pytest.approx(300.0)
    assert 250.0 < ttft.p50 <= 500.0  # 0.3 s lies in the (0.25, 0.5] bucket
    assert ttft.first_bound == 1.0  # the first bucket's bound (ms): a quantile under it reads "<1"
    assert r.latency["itl"] is None and "itl" in r.missing  # not in this exposition
    assert (r.block_size, r.num_blocks, r.prefix_caching) == (32, 1390, True)
    assert has_vllm_metrics(m.last)


OLDER = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="m"}} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="m"}} 1.0
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{{model_name="m"}} 2.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="m"}} {usage}
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{{model_name="m"}} 0.5
# TYPE vllm:gpu_prefix_cache_queries counter
vllm:gpu_prefix_cache_queries_total{{model_name="m"}} {queries}
# TYPE vllm:gpu_prefix_cache_hits counter
vllm:gpu_prefix_cache_hits_total{{model_name="m"}} {hits}
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{{model_name="m"}} {preempt}
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{{model_name="m"}} {gen}
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{{le="0.01",model_name="m"}} {b1}
vllm:time_per_output_token_seconds_bucket{{le="0.05",model_name="m"}} {b2}
vllm:time_per_output_token_seconds_bucket{{le="+Inf",model_name="m"}} {b2}
vllm:time_per_output_token_seconds_count{{model_name="m"}} {b2}
vllm:time_per_output_token_seconds_sum{{model_name="m"}} {s}
"""

V0_GAUGE = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.2
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.625
"""


def test_the_older_gpu_names_are_understood():
    m = VLLMMetrics()
    first = OLDER.format(usage=0.1, queries=64, hits=0, preempt=2, gen=10, b1=10, b2=10, s=0.05)
    then = OLDER.format(usage=0.75, queries=192, hits=96, preempt=5, gen=110, b1=10, b2=110, s=3.05)
    assert has_vllm_metrics(parse_exposition(first))
    m.take(Scrape(0.0, parse_exposition(first)))
    r = m.take(Scrape(1.0, parse_exposition(then)))
    assert r is not None and r.naming == "older (gpu_*)"
    assert (r.running, r.waiting, r.swapped, r.kv_usage, r.cpu_kv_usage) == (3, 1, 2, 0.75, 0.5)
    assert r.prefix_hit_rate == pytest.approx(96 / 128) and r.prefix_hit_rate_total == pytest.approx(96 / 192)
    assert (r.preemptions, r.preemptions_total) == (3, 5)
    itl = r.latency["itl"]  # vllm:time_per_output_token_seconds: 100 new gaps, all in (0.01, 0.05]
    assert itl is not None and itl.count == 100 and itl.mean == pytest.approx(30.0)
    assert 10.0 <= itl.p50 <= 50.0 and itl.p50 == pytest.approx(30.0)
    assert r.generation_tok_s == pytest.approx(100.0)
    v0 = VLLMMetrics().take(Scrape(0.0, parse_exposition(V0_GAUGE)))
    assert v0 is not None and v0.prefix_hit_rate_total == 0.625 and v0.naming == "older (gpu_*)"


def test_a_restarted_server_starts_the_deltas_again_and_failures_are_kept():
    m = VLLMMetrics()
    m.take(Scrape(0.0, _registry_now(0.1, 100, 40, 500, {"length": 9}, [])))
    assert m.take(ScrapeFailed(1.0, "ConnectError: refused")) is m.reading and m.last_error
    r = m.take(Scrape(2.0, _registry_now(0.1, 10, 5, 20, {"length": 1}, [])))  # counters went down
    assert r is not None and m.last_error is None and m.failures == 1
    assert (r.generation_tokens, r.finished) == (0, 0)  # the restart's scrape is the new base
    assert not has_vllm_metrics(parse_exposition("# TYPE up gauge\nup 1\n"))
