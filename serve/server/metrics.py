"""`/metrics`: vLLM's Prometheus metrics (names, buckets, labels `model_name` and `engine`), fed by the bus.

ServeMetrics is an EventFold on the engine's bus (it runs on the engine thread, after each event) over a
registry of its own (never prometheus_client's global one), so two servers in one process do not mix.
Definitions follow vLLM v1: TTFT from arrival to the first token, ITL between a request's consecutive
tokens (a step that appends n tokens counts n gaps of (now - last) / n), e2e from arrival to finish,
prefix-cache queries and hits in tokens, iteration tokens per step, and with speculative decoding vLLM's
spec_decode counters (drafts, draft tokens, accepted tokens, accepted tokens per position). The `kvscope:*`
gauges say what only kvscope knows: cached-free blocks, internal fragmentation and the contiguous-reservation
waste (kvscope.inspector.metrics.fragmentation); for a disaggregated deployment, the KV transfers' bytes and
times (kvscope:kv_transfer_bytes, kvscope:kv_transfer_seconds), and the first decode engine's pool.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvscope.events.records import BlockEvent, KVSnapshot, KVTransfer, RequestEvent, RunInfo, SpecDecode, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, FIRST_TOKEN, PREEMPTED, PREFIX_HIT, RESUMED, SCHEDULED, Kind
from kvscope.inspector.event_fold import EventFold
from kvscope.inspector.metrics import fragmentation

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)  # vLLM's, eager mode
TRANSFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FINISH_REASONS = ("stop", "length", "abort", "error")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics(EventFold):
    """The server's Prometheus metrics; subscribe it to the engine's bus, render with `exposition()`."""

    def __init__(self, model_name: str, engine: str = "0") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model_name", "engine")
        values = (model_name, engine)
        r = self.registry

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, registry=r, multiprocess_mode="mostrecent").labels(*values)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, registry=r).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.kv_peak = gauge("kvscope:kv_cache_usage_peak_perc", "Highest KV-cache usage since the server started.")
        self._peak = 0.0
        self.prefix_queries = counter("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
                                                             "tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          (*labels, "finished_reason"), registry=r)
        self.success = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             E2E_BUCKETS)
        self.iteration_tokens = histogram("vllm:iteration_tokens_total",
                                          "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS)
        self.spec_drafts = counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.")
        self.spec_draft_tokens = counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.")
        self.spec_accepted = counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.")
        self._spec_per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos",
                                     "Accepted tokens per draft position.", (*labels, "position"), registry=r)
        self._labels = values
        self.cached_free = gauge("kvscope:kv_cached_free_blocks",
                                 "Unreferenced KV blocks that still hold a hashed prefix (reusable).")
        self.free_blocks = gauge("kvscope:kv_free_blocks", "KV blocks free and holding nothing reusable.")
        self.used_blocks = gauge("kvscope:kv_used_blocks", "KV blocks referenced by at least one request.")
        self.internal_frag = gauge("kvscope:kv_internal_fragmentation",
                                   "Empty slots in referenced KV blocks / slots in referenced blocks.")
        self.contiguous_waste = gauge("kvscope:kv_contiguous_waste",
                                      "What a contiguous max-length reservation would leave empty, as a fraction.")
        self.kv_transfer_bytes = counter("kvscope:kv_transfer_bytes",
                                         "Bytes of K/V moved from prefill to decode engines (disaggregation).")
        self.kv_transfer_seconds = histogram("kvscope:kv_transfer_seconds", "Histogram of KV transfer time per "
                                             "request, the decode side asking to the K/V landing.", TRANSFER_BUCKETS)
        self.block_size = 0
        self.prefix_caching = False
        self._arrived: dict[int, int] = {}
        self._last_token: dict[int, int] = {}
        self._finished: list[int] = []

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- folding ------------------------------------------------------------------------------
    def on_run_info(self, ev: RunInfo) -> None:
        self.block_size = ev.block_size
        self.prefix_caching = ev.prefix_caching

    def on_block(self, ev: BlockEvent) -> None:
        if ev.what == PREFIX_HIT:
            self.prefix_hits.inc(len(ev.block_ids) * self.block_size)

    def on_request(self, ev: RequestEvent) -> None:
        what, rid = ev.what, ev.request_id
        if what == ARRIVED:
            self._arrived[rid] = ev.ts
        elif what == SCHEDULED or what == RESUMED:
            if self.prefix_caching:
                self.prefix_queries.inc(ev.prompt_tokens + (ev.output_tokens if what == RESUMED else 0))
        elif what == FIRST_TOKEN:
            arrived = self._arrived.get(rid)
            self.prompt_tokens.inc(ev.prompt_tokens)
            if arrived is not None:
                self.ttft.observe((ev.ts - arrived) / 1e9)
        elif what == PREEMPTED:
            self.preemptions.inc()
        elif what == FINISHED:
            counter = self.success.get(ev.reason)
            if counter is not None:
                counter.inc()
            arrived = self._arrived.pop(rid, None)
            self._finished.append(rid)  # its last gap is in this step's StepEnd
            if arrived is not None:
                self.e2e.observe((ev.ts - arrived) / 1e9)

    def on_step_end(self, ev: StepEnd) -> None:
        ts = ev.ts
        if ev.num_tokens > 0:
            self.iteration_tokens.observe(ev.num_tokens)
        last = self._last_token
        for rid, n in ev.sampled:
            if n <= 0:
                continue
            self.generation_tokens.inc(n)
            prev = last.get(rid)
            if prev is not None:
                gap = (ts - prev) / n / 1e9
                for _ in range(n):
                    self.itl.observe(gap)
            last[rid] = ts
        for rid in self._finished:
            last.pop(rid, None)
        self._finished.clear()
        self.running.set(ev.num_running)
        self.waiting.set(ev.num_waiting)

    def on_kv_transfer(self, ev: KVTransfer) -> None:
        if ev.ok:
            self.kv_transfer_bytes.inc(ev.bytes)
            self.kv_transfer_seconds.observe(max(ev.recv_end - ev.recv_start, 0) / 1e9)

    def kv_transfer_observer(self, ev: Any) -> None:
        """A subscriber for a deployment's engine buses: their KV transfers (the rest is the proxy's to count)."""
        if ev.kind == Kind.KV_TRANSFER:
            self.on_kv_transfer(ev)

    def pool_observer(self, ev: Any) -> None:
        """A subscriber for one engine bus of a deployment: its KV pool gauges (the proxy has no pool)."""
        if ev.kind == Kind.KV:
            self.on_kv(ev)

    def on_spec_decode(self, ev: SpecDecode) -> None:
        """A speculative verification (vLLM counts only those that had draft tokens)."""
        if ev.num_draft_tokens <= 0:
            return
        self.spec_drafts.inc()
        self.spec_draft_tokens.inc(ev.num_draft_tokens)
        self.spec_accepted.inc(ev.num_accepted)
        for pos in range(ev.num_accepted):
            self._spec_per_pos.labels(*self._labels, str(pos)).inc()

    def on_kv(self, kv: KVSnapshot) -> None:
        frag = fragmentation(kv)
        self.kv_usage.set(frag.usage)
        if frag.usage > self._peak:
            self._peak = frag.usage
            self.kv_peak.set(frag.usage)
        self.cached_free.set(kv.cached_blocks)
        self.free_blocks.set(kv.free_blocks)
        self.used_blocks.set(kv.used_blocks)
        self.internal_frag.set(frag.internal)
        self.contiguous_waste.set(frag.contiguous_waste)

    def set_queue(self, running: int, waiting: int) -> None:
        """Between steps (an abort, an arrival while idle): the gauges as the engine thread counts them."""
        self.running.set(running)
        self.waiting.set(waiting)
