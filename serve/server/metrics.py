"""`/metrics`: vLLM's Prometheus metrics (names, buckets, labels `model_name` and `engine`), fed by the bus.

ServeMetrics is an EventFold on the engine's bus (it runs on the engine thread, after each event) over a
registry of its own (never prometheus_client's global one), so two servers in one process do not mix.
Definitions follow vLLM v1: TTFT from arrival to the first token, ITL between a request's consecutive
tokens (a step that appends n tokens counts n gaps of (now - last) / n), e2e from arrival to finish,
prefix-cache queries and hits in tokens, iteration tokens per step, and with speculative decoding vLLM's
spec_decode counters (drafts, draft tokens, accepted tokens, accepted tokens per position; only when the recipe
speculates, as vLLM). Each finished request adds to vLLM's per-request histograms (queue, prefill, decode and
inference time, time per output token, prompt / generation / max-generation tokens, max_tokens and n,
preemptions, prefill tokens computed: kvscope.serve.server.request_stats), and every step to vLLM's estimated
FLOPs and bytes read / written per GPU, priced by kvscope's cost model (kvscope.costmodel.roofline) for the
step's query and context lengths. `vllm:cache_config_info` carries the cache's settings as labels. The `kvscope:*`
gauges say what only kvscope knows: cached-free blocks, internal fragmentation and the contiguous-reservation
waste (kvscope.inspector.metrics.fragmentation); for a disaggregated deployment, the KV transfers' bytes and
times (kvscope:kv_transfer_bytes, kvscope:kv_transfer_seconds), and the first decode engine's pool.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.roofline import step_bytes_written, step_op_costs
from kvscope.events.records import BlockEvent, KVSnapshot, KVTransfer, RequestEvent, RunInfo, SpecDecode, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, FIRST_TOKEN, PREEMPTED, PREFIX_HIT, RESUMED, SCHEDULED, Kind
from kvscope.inspector.event_fold import EventFold
from kvscope.inspector.metrics import fragmentation
from kvscope.serve.server.request_stats import RequestStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
NUM_PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
TRANSFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FINISH_REASONS = ("stop", "length", "abort", "error")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")  # vllm:prompt_tokens_by_source
CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")  # ..._cached_by_source
WAITING_REASONS = ("capacity", "deferred")
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def request_token_buckets(max_model_len: int) -> tuple[int, ...]:
    """vLLM's buckets for per-request token counts: 1, 2, 5, 10, 20, 50, ... up to max_model_len."""
    out: list[int] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return tuple(out)
            out.append(mantissa * scale)
        scale *= 10


TOKEN_HISTOGRAMS = (("request_prompt_tokens", "Number of prefill tokens processed."),
                    ("request_generation_tokens", "Number of generation tokens processed."),
                    ("request_max_num_generation_tokens",
                     "Histogram of maximum number of requested generation tokens."),
                    ("request_params_max_tokens", "Histogram of the max_tokens request parameter."),
                    ("request_prefill_kv_computed_tokens",
                     "Histogram of new KV tokens computed during prefill (excluding cached tokens)."))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics(EventFold):
    """The server's Prometheus metrics; subscribe it to the engine's bus, render with `exposition()`."""

    def __init__(self, model_name: str, engine: str = "0", *, max_model_len: int = 2048, speculative: bool = False,
                 shape: ModelConfig | None = None, tp: int = 1, cache_info: dict[str, str] | None = None) -> None:
        """shape: the model's, to price each step (None: the estimated FLOPs and bytes stay 0); tp: the GPUs a
        step's work is spread over; cache_info: cache settings for vllm:cache_config_info beyond the RunInfo's."""
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model_name", "engine")
        values = (model_name, engine)
        self._labels = values
        r = self.registry

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, registry=r, multiprocess_mode="mostrecent").labels(*values)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, registry=r).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(*values)

        def by(kind: type, name: str, doc: str, label: str, keys: tuple[str, ...]) -> dict[str, Any]:
            family = kind(name, doc, (*labels, label), registry=r)
            return {key: family.labels(*values, key) for key in keys}

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.waiting_by_reason = by(Gauge, "vllm:num_requests_waiting_by_reason", "Number of waiting requests by "
                                    "reason: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by "
                                    "transient constraints. Sum of all reasons equals vllm:num_requests_waiting.",
                                    "reason", WAITING_REASONS)
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
        self.prompt_tokens_by_source = by(Counter, "vllm:prompt_tokens_by_source", "Number of prompt tokens by "
                                          "source.", "source", PROMPT_SOURCES)
        self.prompt_tokens_cached = counter("vllm:prompt_tokens_cached",
                                            "Number of cached prompt tokens (local + external).")
        self.cached_by_source = by(Counter, "vllm:prompt_tokens_cached_by_source", "Prefix-cache hit tokens by the "
                                   "cache tier that supplied them.", "source", CACHE_HIT_SOURCES)
        rejections = Counter("vllm:admission_rejections", "Number of admission attempts rejected by a queue limit, "
                             "by reason.", ("model_name", "reason"), registry=r)
        self.admission_rejections = {reason: rejections.labels(model_name, reason) for reason in ADMISSION_REASONS}
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
        self.request_histograms = {
            name: histogram(f"vllm:{name}", doc, buckets) for name, doc, buckets in (
                ("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", E2E_BUCKETS),
                ("request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
                 E2E_BUCKETS),
                ("request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", E2E_BUCKETS),
                ("request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
                 E2E_BUCKETS),
                ("request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.",
                 ITL_BUCKETS),
                ("request_params_n", "Histogram of the n request parameter.", PARAMS_N_BUCKETS),
                ("request_num_preemptions", "Histogram of the number of times a request was preempted.",
                 NUM_PREEMPTIONS_BUCKETS))}
        self._token_families: dict[str, Histogram] = {}
        self._token_histograms(max_model_len)
        per_gpu = "(for Model Flops Utilization calculations; kvscope's cost model)."
        self.est_flops = counter("vllm:estimated_flops_per_gpu", f"Estimated number of floating point operations "
                                 f"per GPU {per_gpu}")
        self.est_read = counter("vllm:estimated_read_bytes_per_gpu", f"Estimated number of bytes read from memory "
                                f"per GPU {per_gpu}")
        self.est_write = counter("vllm:estimated_write_bytes_per_gpu", f"Estimated number of bytes written to "
                                 f"memory per GPU {per_gpu}")
        self.speculative = speculative
        if speculative:  # vLLM exports these only when it speculates
            self.spec_drafts = counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.")
            self.spec_draft_tokens = counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.")
            self.spec_accepted = counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.")
            self._spec_per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos",
                                         "Accepted tokens per draft position.", (*labels, "position"), registry=r)
        self.shape, self.tp, self.elt = shape, max(tp, 1), 4
        self._cache_info = dict(cache_info or {})
        self._cache_gauge: Any = None
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
        self.requests = RequestStats()
        self._last_token: dict[int, int] = {}
        self._finished: list[int] = []

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _token_histograms(self, max_model_len: int) -> None:
        """The per-request token-count histograms, bucketed 1-2-5 up to max_model_len as vLLM does (made again
        when the engine's RunInfo says its length: a flag may ask for more than the model's context)."""
        self._max_model_len = max_model_len
        buckets = request_token_buckets(max_model_len)
        for name, doc in TOKEN_HISTOGRAMS:
            if name in self._token_families:
                self.registry.unregister(self._token_families[name])
            family = Histogram(f"vllm:{name}", doc, ("model_name", "engine"), buckets=buckets, registry=self.registry)
            self._token_families[name] = family
            self.request_histograms[name] = family.labels(*self._labels)

    # --- folding ------------------------------------------------------------------------------
    def on_run_info(self, ev: RunInfo) -> None:
        if ev.max_model_len != self._max_model_len:
            self._token_histograms(ev.max_model_len)
        self.block_size = ev.block_size
        self.prefix_caching = ev.prefix_caching
        self.elt = DTYPE_BYTES.get(ev.dtype, 4)
        tokens = ev.num_blocks * ev.block_size
        info = {"block_size": str(ev.block_size), "cache_dtype": "auto",
                "enable_prefix_caching": str(ev.prefix_caching), "num_gpu_blocks": str(ev.num_blocks),
                "kv_cache_size_tokens": str(tokens), "kv_cache_max_concurrency": f"{tokens / ev.max_model_len:.2f}",
                "prefix_caching_hash_algo": "sha256", "sliding_window": "None", "is_attention_free": "False",
                "num_cpu_blocks": "None",
                **self._cache_info, "engine": self._labels[1]}
        if self._cache_gauge is None:  # an info metric is a gauge set to 1 (vLLM's form)
            self._cache_gauge = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                      tuple(info), registry=self.registry, multiprocess_mode="mostrecent")
        self._cache_gauge.clear()
        self._cache_gauge.labels(**info).set(1)

    def on_block(self, ev: BlockEvent) -> None:
        if ev.what == PREFIX_HIT:
            self.prefix_hits.inc(len(ev.block_ids) * self.block_size)
            self.cached_by_source["device"].inc(len(ev.block_ids) * self.block_size)  # kvscope's one tier

    def on_request(self, ev: RequestEvent) -> None:
        what, rid = ev.what, ev.request_id
        if what == ARRIVED:
            self._arrived[rid] = ev.ts
            self.requests.arrived(rid, ev.ts, ev.prompt_tokens, ev.max_tokens)
        elif what == SCHEDULED or what == RESUMED:
            self.requests.scheduled(rid, ev.ts, ev.computed_tokens)
            if self.prefix_caching:
                self.prefix_queries.inc(ev.prompt_tokens + (ev.output_tokens if what == RESUMED else 0))
        elif what == FIRST_TOKEN:
            arrived = self._arrived.get(rid)
            self.prompt_tokens.inc(ev.prompt_tokens)
            self.requests.first_token(rid, ev.ts)
            times = self.requests.live.get(rid)
            cached = min(times.cached_tokens, ev.prompt_tokens) if times is not None else 0
            self.prompt_tokens_by_source["local_compute"].inc(ev.prompt_tokens - cached)
            self.prompt_tokens_by_source["local_cache_hit"].inc(cached)
            self.prompt_tokens_cached.inc(cached)
            if arrived is not None:
                self.ttft.observe((ev.ts - arrived) / 1e9)
        elif what == PREEMPTED:
            self.preemptions.inc()
            self.requests.preempted(rid)
        elif what == FINISHED:
            counter = self.success.get(ev.reason)
            if counter is not None:
                counter.inc()
            arrived = self._arrived.pop(rid, None)
            self.requests.finished(rid, ev.ts)
            self._finished.append(rid)  # its last gap and tokens are in this step's StepEnd
            if arrived is not None:
                self.e2e.observe((ev.ts - arrived) / 1e9)

    def _observe_finished(self, rid: int) -> None:
        """vLLM's per-request histograms for a request that finished in this step."""
        r = self.requests.pop(rid)
        if r is None:
            return
        h = self.request_histograms
        for name, value in (("request_queue_time_seconds", r.queue_s), ("request_prefill_time_seconds", r.prefill_s),
                            ("request_decode_time_seconds", r.decode_s),
                            ("request_inference_time_seconds", r.inference_s),
                            ("request_time_per_output_token_seconds", r.time_per_output_token_s),
                            ("request_prompt_tokens", r.prompt_tokens), ("request_generation_tokens", r.generated),
                            ("request_max_num_generation_tokens", r.generated), ("request_params_n", 1),
                            ("request_num_preemptions", r.preemptions),
                            ("request_prefill_kv_computed_tokens", r.prompt_tokens - min(r.cached_tokens,
                                                                                         r.prompt_tokens))):
            h[name].observe(value)
        if r.max_tokens:
            h["request_params_max_tokens"].observe(r.max_tokens)

    def _price_step(self, ev: StepEnd) -> None:
        """vLLM's estimated FLOPs and bytes for the step, from the cost model (nothing without a model shape)."""
        query_lens, seq_lens = self.requests.step_shape(ev.prefill, ev.decode, ev.num_tokens)
        if self.shape is None or not query_lens:
            return
        elt, tp = self.elt, self.tp
        costs = step_op_costs(self.shape, query_lens, seq_lens, weight_bytes=elt, act_bytes=elt, kv_bytes=elt)
        flops, moved = sum(c.flops for c in costs.values()), sum(c.bytes for c in costs.values())
        written = step_bytes_written(self.shape, sum(query_lens), len(query_lens), act_bytes=elt, kv_bytes=elt)
        self.est_flops.inc(flops / tp)
        self.est_read.inc(max(moved - written, 0) / tp)
        self.est_write.inc(written / tp)

    def on_step_end(self, ev: StepEnd) -> None:
        ts = ev.ts
        if ev.num_tokens > 0:
            self.iteration_tokens.observe(ev.num_tokens)
        self._price_step(ev)
        last = self._last_token
        for rid, n in ev.sampled:
            if n <= 0:
                continue
            self.requests.sampled(rid, ts, n, rid in self._finished)
            self.generation_tokens.inc(n)
            prev = last.get(rid)
            if prev is not None:
                gap = (ts - prev) / n / 1e9
                for _ in range(n):
                    self.itl.observe(gap)
            last[rid] = ts
        for rid in self._finished:
            last.pop(rid, None)
            self._observe_finished(rid)
        self._finished.clear()
        self.set_queue(ev.num_running, ev.num_waiting)

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
        if ev.num_draft_tokens <= 0 or not self.speculative:
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
        self.waiting_by_reason["capacity"].set(waiting)  # kvscope defers no request for a transient constraint
        self.waiting_by_reason["deferred"].set(0)

    def record_admission_rejection(self, reason: str = "max_num_queued_reqs") -> None:
        """A request refused because the queue is full (the server's --max-waiting limit)."""
        self.admission_rejections[reason].inc()
