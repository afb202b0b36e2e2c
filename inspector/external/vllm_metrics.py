"""vLLM's `/metrics`, scrape after scrape, folded into what the metrics view shows.

Names: today's (vLLM >= 0.11: `vllm:kv_cache_usage_perc`, `vllm:prefix_cache_hits_total`,
`vllm:inter_token_latency_seconds`, ...) first, then the older ones (`vllm:gpu_cache_usage_perc`,
`vllm:gpu_prefix_cache_queries_total` / `_hits_total`, the V0 gauge `vllm:gpu_prefix_cache_hit_rate`,
`vllm:time_per_output_token_seconds`, `vllm:num_requests_swapped`, `vllm:cpu_cache_usage_perc`). A reading says
which naming the server spoke and which quantities it did not export at all.

Counters and histograms are read as deltas from the first scrape (since attach), beside the server's all-time
totals; tokens/s over the last RATE_WINDOW_S seconds of scrapes. A counter that goes down (the server
restarted) starts the deltas afresh from that scrape.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvscope.inspector.external.prometheus import Exposition, Histogram

RATE_WINDOW_S = 10.0
MAX_SCRAPES_KEPT = 600  # the rate window's scrapes and the tokens/s history, bounded however fast one polls
HISTORY = 120  # tokens/s samples kept for the sparkline

GAUGES = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "swapped": ("vllm:num_requests_swapped",),  # V0's swap preemption
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "cpu_kv_usage": ("vllm:cpu_cache_usage_perc",),
    "prefix_hit_rate_gauge": ("vllm:gpu_prefix_cache_hit_rate",),  # V0: a gauge, not two counters
}
COUNTERS = {
    "prefix_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "preemptions": ("vllm:num_preemptions_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "finished": ("vllm:request_success_total",),
}
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "queue": ("vllm:request_queue_time_seconds",),
}
OLDER_NAMES = frozenset({"vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_queries_total",
                         "vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_hit_rate",
                         "vllm:time_per_output_token_seconds_count"})
CACHE_INFO = "vllm:cache_config_info"
FINISHED = "vllm:request_success_total"
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class Scrape:
    """One GET /metrics: when (a monotonic clock, seconds) and what it said."""

    at_s: float
    exposition: Exposition


@dataclass(frozen=True, slots=True)
class ScrapeFailed:
    """A GET /metrics that got no exposition (the server away, a non-200, a malformed body)."""

    at_s: float
    error: str


def has_vllm_metrics(scrape: Exposition) -> bool:
    """A scrape from a server that speaks vLLM's metrics (the KV usage gauge, under either name)."""
    return scrape.first(*GAUGES["kv_usage"]) is not None


@dataclass(frozen=True, slots=True)
class Quantiles:
    """A latency histogram's delta, in milliseconds: p50 / p90 / p99 (within a bucket's width), the exact mean.
    `first_bound` is the first bucket's upper bound: a quantile at or under it says only "below that" (the
    interpolation puts it anywhere in (0, bound]), which the view shows as `<bound`."""

    p50: float
    p90: float
    p99: float
    mean: float
    count: int
    first_bound: float = 0.0

    @classmethod
    def of(cls, h: Histogram) -> Quantiles | None:
        if h.count <= 0:
            return None
        p50, p90, p99 = (h.quantile(q) for q in QUANTILES)
        return cls((p50 or 0.0) * 1e3, (p90 or 0.0) * 1e3, (p99 or 0.0) * 1e3, (h.mean or 0.0) * 1e3,
                   round(h.count), h.bounds[0] * 1e3 if h.bounds else 0.0)


@dataclass(frozen=True)
class MetricsReading:
    """What the metrics view shows after the latest scrape. None: the server does not export it (or, for a
    rate, not enough scrapes yet)."""

    scrapes: int
    naming: str  # "current" or "older (gpu_*)"
    running: float | None = None
    waiting: float | None = None
    swapped: float | None = None
    kv_usage: float | None = None
    cpu_kv_usage: float | None = None
    prefix_hit_rate: float | None = None  # since attach: hits / queries (tokens)
    prefix_hit_rate_total: float | None = None  # the server's whole life
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    preemptions: float | None = None  # since attach
    preemptions_total: float | None = None
    finished: float | None = None  # since attach
    finished_total: float | None = None
    finished_by_reason: dict[str, float] = field(default_factory=dict)  # since attach
    prompt_tokens: float | None = None  # since attach
    generation_tokens: float | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    generation_tok_s: float | None = None  # over the last RATE_WINDOW_S
    prompt_tok_s: float | None = None
    tok_s_history: tuple[float, ...] = ()
    latency: dict[str, Quantiles | None] = field(default_factory=dict)  # ttft / itl / e2e / queue, since attach
    block_size: int | None = None  # from vllm:cache_config_info
    num_blocks: int | None = None
    prefix_caching: bool | None = None
    missing: tuple[str, ...] = ()  # quantities this server does not export


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


class VLLMMetrics:
    """Fold of timed scrapes (`take(scrape)`); `reading` after each, `failures` / `last_error` for the others."""

    def __init__(self) -> None:
        self.base: Exposition | None = None
        self.last: Exposition | None = None
        self.reading: MetricsReading | None = None
        self._recent: deque[tuple[float, Exposition]] = deque(maxlen=MAX_SCRAPES_KEPT)
        self._history: deque[float] = deque(maxlen=HISTORY)
        self.scrapes = 0
        self.failures = 0
        self.last_error: str | None = None  # the latest failure, until a scrape succeeds again

    def _restarted(self, scrape: Exposition) -> bool:
        base = self.base
        if base is None:
            return False
        for names in COUNTERS.values():
            now, then = scrape.first(*names), base.first(*names)
            if now is not None and then is not None and now[1] < then[1]:
                return True
        return False

    def take(self, item: Scrape | ScrapeFailed) -> MetricsReading | None:
        if isinstance(item, ScrapeFailed):
            self.failures += 1
            self.last_error = item.error
            return self.reading
        self.last_error = None
        return self.take_exposition(item.at_s, item.exposition)

    def take_exposition(self, at_s: float, scrape: Exposition) -> MetricsReading:
        self.scrapes += 1
        if self.base is None or self._restarted(scrape):
            self.base = scrape
            self._recent.clear()
        self._recent.append((at_s, scrape))
        while len(self._recent) > 2 and at_s - self._recent[1][0] >= RATE_WINDOW_S:
            self._recent.popleft()
        self.last = scrape
        self.reading = self._read(at_s, scrape)
        return self.reading

    def _read(self, at_s: float, now: Exposition) -> MetricsReading:
        base = self.base
        assert base is not None
        missing: list[str] = []

        def gauge(key: str) -> float | None:
            found = now.first(*GAUGES[key])
            return found[1] if found is not None else None

        def counter(key: str, since: Exposition | None) -> tuple[float | None, float | None]:
            found = now.first(*COUNTERS[key])
            if found is None:
                return None, None
            name, total = found
            start = since.totals.get(name, 0.0) if since is not None else 0.0
            return total - start, total

        values = {key: counter(key, base) for key in COUNTERS}
        for key in ("running", "waiting", "kv_usage"):
            if gauge(key) is None:
                missing.append(key)
        for key in ("prefix_queries", "preemptions", "generation_tokens", "finished"):
            if values[key][1] is None:
                missing.append(key)
        hits, hits_total = values["prefix_hits"]
        queries, queries_total = values["prefix_queries"]
        rate_total = (hits_total / queries_total if queries_total else None) if hits_total is not None else None
        if rate_total is None:
            rate_total = gauge("prefix_hit_rate_gauge")
        latency: dict[str, Quantiles | None] = {}
        for key, names in HISTOGRAMS.items():
            found = next(((n, h) for n in names if (h := now.histogram(n)) is not None), None)
            if found is None:
                missing.append(key)
                latency[key] = None
                continue
            name, h = found
            latency[key] = Quantiles.of(h.minus(base.histogram(name)))
        gen_rate, prompt_rate = self._rates(at_s, now)
        if gen_rate is not None:
            self._history.append(gen_rate)
        by_reason_now, by_reason_then = now.by_label(FINISHED, "finished_reason"), base.by_label(FINISHED,
                                                                                                "finished_reason")
        info = now.labels(CACHE_INFO)
        older = "vllm:kv_cache_usage_perc" not in now.totals and any(n in OLDER_NAMES for n in now.totals)
        return MetricsReading(
            scrapes=self.scrapes,
            naming="older (gpu_*)" if older else "current",
            running=gauge("running"), waiting=gauge("waiting"), swapped=gauge("swapped"),
            kv_usage=gauge("kv_usage"), cpu_kv_usage=gauge("cpu_kv_usage"),
            prefix_hit_rate=(hits / queries if queries else None) if hits is not None else None,
            prefix_hit_rate_total=rate_total,
            prefix_hits=hits or 0.0, prefix_queries=queries or 0.0,
            preemptions=values["preemptions"][0], preemptions_total=values["preemptions"][1],
            finished=values["finished"][0], finished_total=values["finished"][1],
            finished_by_reason={k: v - by_reason_then.get(k, 0.0) for k, v in by_reason_now.items()
                                if v - by_reason_then.get(k, 0.0) > 0},
            prompt_tokens=values["prompt_tokens"][0], generation_tokens=values["generation_tokens"][0],
            prompt_tokens_total=values["prompt_tokens"][1], generation_tokens_total=values["generation_tokens"][1],
            generation_tok_s=gen_rate, prompt_tok_s=prompt_rate, tok_s_history=tuple(self._history),
            latency=latency,
            block_size=_int(info.get("block_size")), num_blocks=_int(info.get("num_gpu_blocks")),
            prefix_caching={"True": True, "False": False}.get(info.get("enable_prefix_caching", "")),
            missing=tuple(missing),
        )

    def _rates(self, at_s: float, now: Exposition) -> tuple[float | None, float | None]:
        """Generation and prompt tokens/s between the oldest scrape of the window and this one."""
        if len(self._recent) < 2:
            return None, None
        t0, first = self._recent[0]
        dt = at_s - t0
        if dt <= 0:
            return None, None

        def rate(key: str) -> float | None:
            found = now.first(*COUNTERS[key])
            if found is None:
                return None
            return max(found[1] - first.totals.get(found[0], 0.0), 0.0) / dt

        return rate("generation_tokens"), rate("prompt_tokens")
