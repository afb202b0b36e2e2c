"""The load loop of `kvscope bench serve`: streaming requests against any OpenAI-compatible server, timed on
the client as `vllm bench serve` times them.

Each request streams (`stream_options.include_usage`): TTFT is the time from sending to the first chunk
with `choices`, ITL the gaps between later chunks, latency the time to the end of the stream, the output
length the server's `usage.completion_tokens`. Arrivals follow `--request-rate` with `--burstiness` (gamma
intervals of mean 1/rate, shape burstiness: 1 is Poisson), all at once at rate inf; `--max-concurrency`
bounds the requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from kvscope.serve.client.bench_dataset import SampleRequest


@dataclass(slots=True)
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    generated_text: str = ""
    error: str = ""
    start: float = 0.0


def _payload(endpoint: str, model: str, req: SampleRequest, ignore_eos: bool, extra: dict[str, Any]) -> dict:
    body: dict[str, Any] = {"model": model, "max_tokens": req.expected_output_len, "temperature": 0.0,
                            "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    if "chat" in endpoint:
        body["messages"] = [{"role": "user", "content": req.prompt}]
        body["max_completion_tokens"] = body.pop("max_tokens")
    else:
        body["prompt"] = req.prompt
    body.update(extra)
    return body


async def send_one(client: httpx.AsyncClient, url: str, body: dict[str, Any], prompt_len: int) -> RequestResult:
    """One streaming request, timed; never raises (a failure is a result with success False)."""
    out = RequestResult(prompt_len=prompt_len)
    chat = "messages" in body
    st = out.start = time.perf_counter()
    last = st
    chunks = 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                out.error = f"HTTP {response.status_code}: {(await response.aread()).decode(errors='replace')[:200]}"
                return out
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                msg = json.loads(data)
                if "error" in msg:
                    out.error = str(msg["error"].get("message", msg["error"]))
                    return out
                choices = msg.get("choices")
                if choices:
                    if chunks == 0:
                        out.ttft = now - st
                    else:
                        out.itl.append(now - last)
                    last = now
                    chunks += 1
                    c = choices[0]
                    text = (c.get("delta") or {}).get("content") if chat else c.get("text")
                    out.generated_text += text or ""
                usage = msg.get("usage")
                if usage:
                    out.output_tokens = usage.get("completion_tokens") or 0
        out.latency = time.perf_counter() - st
        if not out.output_tokens:  # a server without usage in streams: one token per chunk
            out.output_tokens = chunks
        out.success = chunks > 0
        if not out.success:
            out.error = "the stream held no tokens"
    except (httpx.HTTPError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def arrival_gaps(n: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds to wait before each request: 0 at rate inf, else gamma(shape=burstiness, mean=1/rate)."""
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(seed)
    theta = 1.0 / (request_rate * burstiness)
    return [rng.gammavariate(burstiness, theta) for _ in range(n)]


async def run_load(base_url: str, endpoint: str, model: str, requests: list[SampleRequest], *,
                   request_rate: float, burstiness: float, max_concurrency: int | None, ignore_eos: bool,
                   seed: int, extra_body: dict[str, Any] | None = None, timeout_s: float = 6 * 3600,
                   on_done: Callable[[RequestResult], None] | None = None,
                   headers: dict[str, str] | None = None) -> tuple[list[RequestResult], float]:
    """Send every request on its arrival schedule; (results in request order, benchmark duration in s).
    `headers` go with every request (a server's API key)."""
    url = base_url.rstrip("/") + endpoint
    limit = max_concurrency or len(requests) or 1
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    sem = asyncio.Semaphore(limit)
    gaps = arrival_gaps(len(requests), request_rate, burstiness, seed)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=30), limits=limits,
                                 headers=headers) as client:

        async def limited(req: SampleRequest) -> RequestResult:
            async with sem:
                result = await send_one(client, url, _payload(endpoint, model, req, ignore_eos, extra_body or {}),
                                        req.prompt_len)
            if on_done is not None:
                on_done(result)
            return result

        start = time.perf_counter()
        tasks = []
        for req, gap in zip(requests, gaps):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(limited(req)))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start
