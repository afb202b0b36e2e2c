"""The server's own view of a benchmark: its vLLM /metrics before and after (and sampled during) the run.

Works with any server that exports vLLM's metric names (kvscope, vLLM); None when there is no /metrics.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from kvscope.inspector.external.prometheus import parse_exposition

SAMPLE_EVERY_S = 0.1


def parse_totals(text: str) -> dict[str, float]:
    """Sample name -> value summed over label sets (one engine or many)."""
    return parse_exposition(text).totals


async def scrape(client: httpx.AsyncClient, base_url: str) -> dict[str, float] | None:
    try:
        r = await client.get(base_url.rstrip("/") + "/metrics")
        if r.status_code != 200:
            return None
        return parse_totals(r.text)
    except (httpx.HTTPError, ValueError):
        return None


class MetricsWatch:
    """`async with MetricsWatch(url) as w:` around a run; then `w.summary()` (None without vLLM metrics)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.before: dict[str, float] | None = None
        self.after: dict[str, float] | None = None
        self.peak_kv = 0.0
        self._client = httpx.AsyncClient(timeout=5, headers=headers)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MetricsWatch:
        self.before = await scrape(self._client, self.base_url)
        if self.before is not None:
            self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            m = await scrape(self._client, self.base_url)
            if m is not None:
                self.peak_kv = max(self.peak_kv, m.get("vllm:kv_cache_usage_perc", 0.0))
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self.after = await scrape(self._client, self.base_url)
        await self._client.aclose()

    def _peak_kv(self, before: dict[str, float], after: dict[str, float]) -> float:
        """The samples' highest KV use; kvscope's all-time peak gauge when it rose during the run (exact)."""
        peak = max(self.peak_kv, after.get("vllm:kv_cache_usage_perc", 0.0))
        name = "kvscope:kv_cache_usage_peak_perc"
        if name in after and after[name] > before.get(name, 0.0):
            peak = max(peak, after[name])
        return peak

    def summary(self) -> dict[str, Any] | None:
        before, after = self.before, self.after
        if before is None or after is None or "vllm:kv_cache_usage_perc" not in after:
            return None

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        queries, hits = delta("vllm:prefix_cache_queries_total"), delta("vllm:prefix_cache_hits_total")
        return {"preemptions": delta("vllm:num_preemptions_total"),
                "prefix_cache_queries": queries, "prefix_cache_hits": hits,
                "prefix_cache_hit_rate": hits / queries if queries else None,
                "peak_kv_cache_usage": self._peak_kv(before, after),
                "prompt_tokens": delta("vllm:prompt_tokens_total"),
                "generation_tokens": delta("vllm:generation_tokens_total")}
