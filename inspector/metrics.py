"""Run metrics computed from events: THE one place TTFT, ITL, E2E, throughput, KV usage,
fragmentation, preemptions and prefix-cache hit rate are defined.

The headless summary, the TUI and the trace counters all read these numbers, so a live
run and a replay of its recording give identical results. Pure python (no torch).

Definitions (all times from event timestamps, ns on the engine's monotonic clock):
    TTFT      first_token event ts - arrived event ts, per request
    ITL       gap between the step ends at which a request received tokens; a step that
              appends n tokens contributes n samples of gap / n
    E2E       finished event ts - arrived event ts
    duration  first StepBegin ts -> last StepEnd ts; throughput = generated tokens / duration
    tokens per step      mean StepEnd.num_tokens over steps that computed tokens
    prefix hit rate      prefix_hit blocks x block_size / prompt tokens looked up (the prompt,
                         plus output already generated on a resume, each time a request is
                         scheduled from the queue); 0 without prefix caching
    internal fragmentation   empty slots in referenced blocks / slots in referenced blocks
    contiguous waste         slots a max-length contiguous reservation would leave empty /
                             slots it would reserve (waste + stored tokens)
    speculative decoding     kvscope.inspector.spec_metrics (acceptance, from SpecDecode events)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kvscope.events.records import BlockEvent, KVSnapshot, RequestEvent, RunInfo, SpecDecode, StepBegin, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, FIRST_TOKEN, PREEMPTED, PREFIX_HIT, RESUMED, SCHEDULED
from kvscope.inspector.event_fold import EventFold
from kvscope.inspector.spec_metrics import SpecDecodeStats, SpecDecodeSummary


@dataclass(slots=True)
class Percentiles:
    """A latency distribution in milliseconds."""

    p50: float = 0.0
    p99: float = 0.0
    mean: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, values_ms: list[float]) -> Percentiles:
        if not values_ms:
            return cls()
        xs = sorted(values_ms)
        return cls(percentile(xs, 50.0), percentile(xs, 99.0), math.fsum(xs) / len(xs), len(xs))


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = k - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass(slots=True)
class Fragmentation:
    """KV pool occupancy and waste at one snapshot (fractions in [0, 1])."""

    usage: float            # referenced blocks / total blocks
    cached: float           # unreferenced-but-cached blocks / total blocks
    internal: float         # empty slots in referenced blocks / slots in referenced blocks
    contiguous_waste: float  # what a contiguous max-length reservation would leave empty, as a fraction
    external: float         # the contiguous allocator's free blocks outside its longest free run / free blocks
    used_blocks: int
    cached_blocks: int
    free_blocks: int
    num_blocks: int


def fragmentation(kv: KVSnapshot) -> Fragmentation:
    """Occupancy and fragmentation of one KV snapshot."""
    total = kv.num_blocks
    used_slots = kv.used_blocks * kv.block_size
    reserved = kv.contiguous_waste_slots + kv.tokens_stored
    return Fragmentation(
        usage=kv.used_blocks / total if total else 0.0,
        cached=kv.cached_blocks / total if total else 0.0,
        internal=kv.reserved_empty_slots / used_slots if used_slots else 0.0,
        contiguous_waste=kv.contiguous_waste_slots / reserved if reserved else 0.0,
        external=1 - kv.largest_free_run / free if kv.largest_free_run >= 0 and (free := kv.free_blocks) else 0.0,
        used_blocks=kv.used_blocks,
        cached_blocks=kv.cached_blocks,
        free_blocks=kv.free_blocks,
        num_blocks=total,
    )


@dataclass
class RunSummary:
    """The numbers of one run; `to_dict()` is the --json output (kvscope.cli.summary_table prints it for people)."""

    requests: int = 0
    finished: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    duration_s: float = 0.0
    throughput_tok_s: float = 0.0
    ttft_ms: Percentiles = field(default_factory=Percentiles)
    itl_ms: Percentiles = field(default_factory=Percentiles)
    e2e_ms: Percentiles = field(default_factory=Percentiles)
    tokens_per_step_mean: float = 0.0
    computed_tokens: int = 0  # the requests' tokens the steps ran through the model (padding not counted)
    padding_tokens: int = 0  # computed and thrown away: a static batch's short prompts and finished seats
    padding_share: float = 0.0  # of every token the steps computed (requests' + padding)
    num_blocks: int = 0
    peak_kv_blocks: int = 0
    peak_kv_usage: float = 0.0
    preemptions: int = 0
    prefix_hit_tokens: int = 0
    prefix_lookup_tokens: int = 0
    prefix_hit_rate: float = 0.0
    internal_fragmentation: float = 0.0
    internal_fragmentation_mean: float = 0.0
    contiguous_waste: float = 0.0
    contiguous_waste_mean: float = 0.0
    external_fragmentation_mean: float = 0.0  # the contiguous allocator's (kvscope.inspector.metrics.Fragmentation)
    refused_with_memory_free: int = 0  # requests the contiguous allocator made wait although enough was free
    spec_decode: SpecDecodeSummary | None = None  # with speculative decoding

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, keys in field order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = asdict(value) if isinstance(value, (Percentiles, SpecDecodeSummary)) else value
        return out


class Metrics(EventFold):
    """A bus subscriber that accumulates the run's metrics; `summary()` at any moment.

    A RunInfo (start of a run, or after a reset) starts the accumulation afresh (the engine emits
    it before any other event of the run, its arrivals included).
    """

    def __init__(self) -> None:
        self._reset(None)

    def _reset(self, info: RunInfo | None) -> None:
        self.info = info
        self.block_size = info.block_size if info is not None else 0
        self.num_blocks = info.num_blocks if info is not None else 0
        self.prefix_caching = bool(info.prefix_caching) if info is not None else False
        self._arrived: dict[int, int] = {}
        self._last_token_ts: dict[int, int] = {}
        self._finished = 0
        self._prompt_tokens = 0
        self._generated = 0
        self._ttft_ns: list[int] = []
        self._itl_ms: list[float] = []
        self._e2e_ns: list[int] = []
        self._first_step_ts: int | None = None
        self._last_step_ts: int | None = None
        self._steps = 0
        self._busy_steps = 0
        self._busy_tokens = 0
        self._padding = 0
        self._peak_used = 0
        self._preemptions = 0
        self._hit_tokens = 0
        self._lookup_tokens = 0
        self._kv_count = 0
        self._internal_sum = 0.0
        self._waste_sum = 0.0
        self._external_sum = 0.0
        self._refused_free = 0
        self.last_fragmentation: Fragmentation | None = None
        self.num_running = 0
        self.num_waiting = 0
        self.spec = SpecDecodeStats()

    # ------------------------------------------------------------------ events
    def on_run_info(self, ev: RunInfo) -> None:
        self._reset(ev)

    def on_spec_decode(self, ev: SpecDecode) -> None:
        self.spec.on_spec_decode(ev)

    def on_step_begin(self, ev: StepBegin) -> None:
        if self._first_step_ts is None:
            self._first_step_ts = ev.ts

    def on_block(self, ev: BlockEvent) -> None:
        if ev.what == PREFIX_HIT:
            self._hit_tokens += len(ev.block_ids) * self.block_size

    def on_request(self, ev: RequestEvent) -> None:
        what = ev.what
        rid = ev.request_id
        if what == ARRIVED:
            self._arrived[rid] = ev.ts
            self._prompt_tokens += ev.prompt_tokens
        elif what == SCHEDULED or what == RESUMED:
            if self.prefix_caching:
                self._lookup_tokens += ev.prompt_tokens + (ev.output_tokens if what == RESUMED else 0)
        elif what == FIRST_TOKEN:
            arrived = self._arrived.get(rid)
            if arrived is not None:
                self._ttft_ns.append(ev.ts - arrived)
        elif what == PREEMPTED:
            self._preemptions += 1
        elif what == FINISHED:
            self._finished += 1
            arrived = self._arrived.get(rid)
            if arrived is not None:
                self._e2e_ns.append(ev.ts - arrived)

    def on_step_end(self, ev: StepEnd) -> None:
        ts = ev.ts
        self._steps += 1
        self._last_step_ts = ts
        if ev.num_tokens > 0:
            self._busy_steps += 1
            self._busy_tokens += ev.num_tokens
        self._padding += ev.padding_tokens
        last = self._last_token_ts
        for rid, n in ev.sampled:
            if n <= 0:
                continue
            self._generated += n
            prev = last.get(rid)
            if prev is not None:
                gap_ms = (ts - prev) / n / 1e6
                self._itl_ms.extend([gap_ms] * n)
            last[rid] = ts
        self.num_running = ev.num_running
        self.num_waiting = ev.num_waiting

    def on_kv(self, kv: KVSnapshot) -> None:
        frag = fragmentation(kv)
        self.last_fragmentation = frag
        self.num_blocks = kv.num_blocks
        if kv.used_blocks > self._peak_used:
            self._peak_used = kv.used_blocks
        self._kv_count += 1
        self._internal_sum += frag.internal
        self._waste_sum += frag.contiguous_waste
        self._external_sum += frag.external
        self._refused_free = kv.refused_with_memory_free

    def duration_s(self) -> float:
        """First StepBegin to last StepEnd so far."""
        if self._first_step_ts is None or self._last_step_ts is None:
            return 0.0
        return max(self._last_step_ts - self._first_step_ts, 0) / 1e9

    def latencies_ms(self) -> dict[str, list[float]]:
        """Every TTFT, inter-token gap (ITL, vLLM's TBT) and end-to-end latency so far, in ms (for any
        percentile: the capacity search's SLOs)."""
        return {"ttft": [t / 1e6 for t in self._ttft_ns], "itl": list(self._itl_ms),
                "e2e": [t / 1e6 for t in self._e2e_ns]}

    def summary(self) -> RunSummary:
        """The metrics so far."""
        duration_s = self.duration_s()
        frag = self.last_fragmentation
        return RunSummary(
            requests=len(self._arrived),
            finished=self._finished,
            prompt_tokens=self._prompt_tokens,
            generated_tokens=self._generated,
            steps=self._steps,
            duration_s=duration_s,
            throughput_tok_s=self._generated / duration_s if duration_s > 0 else 0.0,
            ttft_ms=Percentiles.of([t / 1e6 for t in self._ttft_ns]),
            itl_ms=Percentiles.of(self._itl_ms),
            e2e_ms=Percentiles.of([t / 1e6 for t in self._e2e_ns]),
            tokens_per_step_mean=self._busy_tokens / self._busy_steps if self._busy_steps else 0.0,
            computed_tokens=self._busy_tokens,
            padding_tokens=self._padding,
            padding_share=self._padding / computed if (computed := self._busy_tokens + self._padding) else 0.0,
            num_blocks=self.num_blocks,
            peak_kv_blocks=self._peak_used,
            peak_kv_usage=self._peak_used / self.num_blocks if self.num_blocks else 0.0,
            preemptions=self._preemptions,
            prefix_hit_tokens=self._hit_tokens,
            prefix_lookup_tokens=self._lookup_tokens,
            prefix_hit_rate=self._hit_tokens / self._lookup_tokens if self._lookup_tokens else 0.0,
            internal_fragmentation=frag.internal if frag else 0.0,
            internal_fragmentation_mean=self._internal_sum / self._kv_count if self._kv_count else 0.0,
            contiguous_waste=frag.contiguous_waste if frag else 0.0,
            contiguous_waste_mean=self._waste_sum / self._kv_count if self._kv_count else 0.0,
            external_fragmentation_mean=self._external_sum / self._kv_count if self._kv_count else 0.0,
            refused_with_memory_free=self._refused_free,
            spec_decode=self.spec.summary(),
        )


def summarize(events: Iterable[Any]) -> RunSummary:
    """Metrics of a finished event stream (a list or a replayed recording)."""
    metrics = Metrics()
    metrics.take_all(events)
    return metrics.summary()
