"""`kvscope attach` on a real `vllm serve` WITHOUT kvscope's plugin, KV events on: it falls back to the
metrics view, whose numbers are vLLM's own /metrics (scraped independently here) after traffic from the
openai client, and whose cached-block set (vLLM's ZMQ KV events, with the replay socket) holds exactly the
full blocks the traffic computed, predicts vLLM's own prefix-cache hits for a repeated prompt, and empties on
vLLM's /reset_prefix_cache. One server start."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from kvscope.cli.commands.attach import attach_app
from kvscope.inspector.external.kv_events import KVBlockSet
from kvscope.serve.client.kv_events_client import KVEventsSubscriber
from kvscope.serve.server.api_server import free_port
from kvscope.tui.metrics_app import MetricsApp
from support.scrape import metric, metrics
from support.vllm_env import SERVED_NAME, requires_vllm, vllm_server
from support.waiting import wait_until

BLOCK = 32
SHARED = list(range(1000, 1000 + 3 * BLOCK))  # three full blocks every prompt starts with
N = 6
MAX_TOKENS = 57  # 136 prompt + 57 output - 1 (the last token is sampled, never computed) = 192: 6 full blocks
PER_REQUEST_BLOCKS = (len(SHARED) + 40 + MAX_TOKENS - 1) // BLOCK
HITS = "vllm:prefix_cache_hits_total"
SIZE = (160, 50)


def prompt(i: int) -> list[int]:
    """Token ids (the completions API takes them as they are): the shared blocks, then 40 of request i's own."""
    return SHARED + [5000 + 100 * i + j for j in range(40)]


@pytest.fixture(scope="module")
def vllm_kv(tmp_path_factory):
    if (reason := requires_vllm.kwargs["reason"]) and requires_vllm.args[0]:
        pytest.skip(reason)
    pub, replay = free_port(), free_port()
    # vLLM binds the PUB socket only for a wildcard endpoint (otherwise it connects); the replay one always binds
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{pub}",
              "replay_endpoint": f"tcp://127.0.0.1:{replay}"}
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_SERVER_DEV_MODE", "1")  # POST /reset_prefix_cache (AllBlocksCleared)
        with vllm_server("--max-num-seqs", "4", "--block-size", str(BLOCK), "--kv-events-config",
                         json.dumps(config), log=log) as srv:
            yield srv.url, f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}"


def _complete(url: str, prompts: list[list[int]], max_tokens: int) -> list[dict]:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=180, max_retries=0)
    usages: list[dict] = []

    def one(p: list[int]) -> None:
        r = client.completions.create(model=SERVED_NAME, prompt=p, max_tokens=max_tokens, temperature=0.0,
                                      extra_body={"ignore_eos": True})
        usages.append(r.usage.model_dump())

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    return usages


def _late_joiner(events: str, replay: str | None, want: set) -> tuple[bool, int]:
    """A subscriber that joins after the traffic: with the replay socket it rebuilds the same set from vLLM's
    history (vLLM's own replay protocol, not a stand-in); (the same set?, blocks it has)."""
    items: list = []
    blocks = KVBlockSet()
    taken = 0
    sub = KVEventsSubscriber(events, items.append, replay_endpoint=replay).start()

    def caught_up() -> bool:
        nonlocal taken
        for item in items[taken:]:
            blocks.take(item)
            taken += 1
        return not sub.replaying and set(blocks.blocks) == want

    try:
        same = wait_until(caught_up, 20, 0.05)
    finally:
        sub.stop()
    return same and blocks.complete, len(blocks.blocks)


async def _until(pilot, cond, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if cond():
            return True
        await pilot.pause(0.05)
    return bool(cond())


def test_attach_without_the_plugin_shows_vllms_metrics_and_its_cached_blocks(vllm_kv):
    url, events, replay = vllm_kv
    assert httpx.get(url + "/kvscope/v1/snapshot", timeout=10).status_code == 404  # no plugin
    before = metrics(url)
    app = attach_app(url, kv_events=events, kv_replay=replay, interval_s=0.2)
    assert isinstance(app, MetricsApp)
    seen: dict = {}

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            model = app.model
            assert await _until(pilot, lambda: model.metrics.reading is not None, 20)
            seen["usages"] = await asyncio.to_thread(_complete, url, [prompt(i) for i in range(N)], MAX_TOKENS)
            after = seen["after"] = await asyncio.to_thread(metrics, url)
            finished = metric(after, "vllm:request_success_total")
            want_blocks = len(SHARED) // BLOCK + N * (PER_REQUEST_BLOCKS - len(SHARED) // BLOCK)
            await _until(pilot, lambda: (r := model.metrics.reading) is not None and r.finished_total == finished
                         and len(model.blocks.blocks) >= want_blocks, 30)
            await pilot.pause(1.0)  # anything late would show now
            seen["reading"] = model.metrics.reading
            seen["blocks"] = len(model.blocks.blocks)
            seen["complete"] = model.blocks.complete
            seen["text"] = {w: str(app.query_one(w).render()) for w in
                            ("#status", "#queues", "#throughput", "#quantiles", "#kv-events", "#cannot-show")}
            seen["late"] = await asyncio.to_thread(_late_joiner, events, replay, set(model.blocks.blocks))
            probe = prompt(2)  # repeated: vLLM finds its full blocks but the last in its prefix cache
            seen["predicted"] = min(model.blocks.lookup(probe, BLOCK), (len(probe) - 1) // BLOCK) * BLOCK
            m0 = await asyncio.to_thread(metrics, url)
            await asyncio.to_thread(_complete, url, [probe], 1)
            m1 = await asyncio.to_thread(metrics, url)
            seen["vllm_hits"] = metric(m1, HITS) - metric(m0, HITS)
            r = await asyncio.to_thread(httpx.post, url + "/reset_prefix_cache", timeout=30)
            seen["reset"] = r.status_code
            # vLLM publishes its queued events with a step's output: one short request (no full block) sends it
            await asyncio.to_thread(_complete, url, [[7] * 8], 1)
            await _until(pilot, lambda: model.blocks.cleared > 0, 20)
            seen["after_reset"] = (len(model.blocks.blocks), model.blocks.cleared)
            await pilot.press("q")

    asyncio.run(drive())
    after, r = seen["after"], seen["reading"]
    usages = seen["usages"]
    assert len(usages) == N and sum(u["completion_tokens"] for u in usages) == N * MAX_TOKENS

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    # the metrics view's numbers are vLLM's own
    assert r is not None and r.naming == "current"
    assert r.finished == delta("vllm:request_success_total") == N
    assert r.finished_total == metric(after, "vllm:request_success_total")
    assert r.finished_by_reason == {"length": N}
    assert r.generation_tokens == delta("vllm:generation_tokens_total") == N * MAX_TOKENS
    assert r.prompt_tokens == delta("vllm:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    queries, hits = delta("vllm:prefix_cache_queries_total"), delta(HITS)
    assert hits > 0 and r.prefix_hit_rate == pytest.approx(hits / queries)
    assert r.preemptions_total == metric(after, "vllm:num_preemptions_total")
    assert (r.running, r.waiting) == (metric(after, "vllm:num_requests_running"),
                                      metric(after, "vllm:num_requests_waiting")) == (0, 0)
    assert r.kv_usage == pytest.approx(metric(after, "vllm:kv_cache_usage_perc"))
    for key, family in (("ttft", "vllm:time_to_first_token_seconds"), ("e2e", "vllm:e2e_request_latency_seconds"),
                        ("itl", "vllm:inter_token_latency_seconds")):
        q = r.latency[key]
        count = delta(family + "_count")
        assert q is not None and q.count == count > 0, key
        assert q.mean == pytest.approx(delta(family + "_sum") / count * 1e3, rel=1e-6), key
        assert q.p50 <= q.p90 <= q.p99, key
    assert r.latency["ttft"].count == N and r.latency["itl"].count == N * (MAX_TOKENS - 1)
    assert (r.block_size, r.prefix_caching) == (BLOCK, True) and r.num_blocks
    # the cached-block set: every full block the traffic computed, once (the shared ones once in all)
    assert seen["blocks"] == len(SHARED) // BLOCK + N * (PER_REQUEST_BLOCKS - len(SHARED) // BLOCK)
    assert seen["complete"], "the replay from seq 0 should give the whole history"
    assert seen["late"] == (True, seen["blocks"]), seen["late"]
    assert seen["predicted"] == seen["vllm_hits"] == (len(prompt(2)) - 1) // BLOCK * BLOCK
    assert seen["reset"] == 200 and seen["after_reset"] == (0, 1)
    # and the screen says it
    text = seen["text"]
    assert "metrics view" in text["#status"] and "no kvscope plugin" in text["#status"]
    assert f"{N} since attach" in text["#throughput"] and f"{N * MAX_TOKENS} since attach" in text["#throughput"]
    assert f"cached blocks {seen['blocks']}" in text["#kv-events"] and "history complete" in text["#kv-events"]
    assert "TTFT  p50" in text["#quantiles"]
    assert "physical block ids" in text["#cannot-show"] and "owns or shares" in text["#cannot-show"]


def test_trace_attach_still_needs_the_plugin(vllm_kv):
    from kvscope.cli.main import main

    url, _, _ = vllm_kv
    assert main(["trace", "--attach", url, "--seconds", "1"]) == 2  # a recording needs the plugin's events
