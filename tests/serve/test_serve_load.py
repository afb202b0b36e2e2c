"""A bounded load test of `kvscope serve` on loopback: 300 requests at random arrival times, a third of
them abandoned by their clients at random moments (mid-stream, or while waiting for a plain response),
against a KV pool small enough to preempt.

Oracles: every request its client waited for ends well with the usage it asked for (ignore_eos: exactly
max_tokens); /health answers 200 throughout; at the end the engine holds no request and every block is back
in the free pool; /metrics counted each request once and saw preemptions.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvscope.engine.llm import as_recipe
from kvscope.serve.server.api_server import ServerThread

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_REQUESTS = 300
RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 48, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 96, "max_model_len": 128}}


async def one(client: httpx.AsyncClient, url: str, rng: random.Random, i: int) -> tuple[str, int]:
    """('ok', tokens) for a finished request, ('left', 0) for one its client abandoned."""
    max_tokens = rng.randint(4, 24)
    body = {"prompt": f"request {i} " + "word " * rng.randint(1, 8), "max_tokens": max_tokens, "ignore_eos": True}
    leave_after = rng.randint(1, max_tokens) if rng.random() < 1 / 3 else None
    if rng.random() < 0.5:  # streaming
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        chunks, usage = 0, None
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                msg = json.loads(line[6:])
                assert "error" not in msg, msg
                if msg["choices"]:
                    chunks += 1
                    # a fast engine sends several tokens a chunk: a leaving client leaves by the last one at the latest
                    last = msg["choices"][0].get("finish_reason") is not None
                    if leave_after is not None and (chunks >= leave_after or last):
                        return "left", 0  # closes the connection mid-stream
                if msg.get("usage"):
                    usage = msg["usage"]
        assert usage is not None and usage["completion_tokens"] == max_tokens
        return "ok", max_tokens
    if leave_after is not None:
        try:
            await client.post(url + "/v1/completions", json=body, timeout=rng.uniform(0.001, 0.3))
        except httpx.TimeoutException:
            return "left", 0
        return "ok", max_tokens  # it finished before its client gave up
    r = await client.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == max_tokens
    return "ok", max_tokens


async def drive(url: str) -> tuple[list[tuple[str, int]], list[float]]:
    rng = random.Random(1234)
    health: list[float] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=400)) as client:
        async def watch_health() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = await client.get(url + "/health", timeout=5)
                assert r.status_code == 200
                health.append(time.perf_counter() - t0)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_health())
        tasks = []
        for i in range(N_REQUESTS):
            await asyncio.sleep(rng.expovariate(150.0))  # ~150 requests/s, Poisson
            tasks.append(asyncio.create_task(one(client, url, random.Random(i), i)))
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=240)
        stop.set()
        await watcher
    return results, health


def totals(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            key = s.name + (f"/{s.labels['finished_reason']}" if "finished_reason" in s.labels else "")
            out[key] = out.get(key, 0.0) + s.value
    return out


def test_load_with_random_disconnects_leaks_nothing_and_stays_healthy():
    with ServerThread(as_recipe(RECIPE)) as srv:
        results, health = asyncio.run(drive(srv.url))
        loop, engine = srv.state.engine, srv.state.engine.engine
        deadline = time.monotonic() + 20
        while (engine.has_unfinished() or loop.num_open) and time.monotonic() < deadline:
            time.sleep(0.02)
        m = totals(srv.url)
        assert not engine.has_unfinished() and loop.num_open == 0 and engine.requests == {}
        assert engine.block_manager.num_free_blocks == engine.num_blocks, "leaked KV blocks"
        assert engine.block_manager.num_used_blocks == 0
    ok = [n for what, n in results if what == "ok"]
    left = sum(1 for what, _ in results if what == "left")
    assert len(ok) + left == N_REQUESTS and left > 30 and len(ok) > 150
    assert len(health) > 5, "the server answered /health throughout (each within 5 s, or the watcher failed)"
    finished = sum(m.get(f"vllm:request_success_total/{r}", 0) for r in ("stop", "length", "abort", "error"))
    assert m["vllm:request_success_total/error"] == 0
    assert m["vllm:request_success_total/length"] >= len(ok)
    assert len(ok) <= finished <= N_REQUESTS  # a client that left before its request was added adds nothing
    assert m["vllm:request_success_total/abort"] <= left
    assert m["vllm:request_success_total/length"] + m["vllm:request_success_total/abort"] == finished
    assert m["vllm:num_preemptions_total"] > 0, "the pool was small enough to preempt"
