"""Chrome Trace Event export (Perfetto, chrome://tracing) of a recorded event stream.

Layout (ts in microseconds from the first event, in exact binary fractions of 1/1024 µs, so that every
viewer's float arithmetic on ts and dur is exact and slices nest as their nanoseconds say:
kvscope.inspector.export.trace_clock):
    pid 1 "kvscope engine"
        tid 1 "steps"    X "step N" > X schedule / draft / prepare / forward / sample (draft: speculative
                         decoding's drafter; the forward and the sample then verify the drafts)
        tid 2 "kernels"  X forward > X "layer L" > X op; X sample > X sample op
        tid 3 "blocks"   instant events for alloc / free / prefix_hit / cached / evict / spec_alloc /
                         spec_rollback
        counters         "KV blocks" (used / cached / free), "requests" (running / waiting),
                         "tokens per step" (the requests' and padding), "KV waste %" (internal / contiguous), from
                         kvscope.inspector.metrics.fragmentation; with speculative decoding "spec decode"
                         (draft tokens and accepted tokens per step)
    pid 2 "requests"
        async b/e (cat "request", id = request id): "request N" from arrival to finish,
        nested: queued, prefill (one per chunk), decoding (one per uninterrupted run), preempted
        tid 1+N "request N": the same slices as X events, because flow arrows bind to thread
        slices: each prefill chunk / decode step sends a flow ("s" here, "f" with bp "e" on the
        step's slice) to the step that served it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvscope.events.records import BlockEvent, KernelEvent, KVSnapshot, RequestEvent, RunInfo, SpecDecode, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, PREEMPTED, RESUMED, SCHEDULED, Kind, Phase, RangeCategory
from kvscope.inspector.event_fold import EventFold
from kvscope.inspector.export.trace_clock import END_NS, START_NS, TraceClock, fit_slices
from kvscope.inspector.metrics import fragmentation

PID_ENGINE = 1
PID_REQUESTS = 2
TID_STEPS = 1
TID_KERNELS = 2
TID_BLOCKS = 3


def request_tid(request_id: int) -> int:
    return 1 + request_id


@dataclass(slots=True)
class _Segment:
    name: str
    start: int
    end: int
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _RequestLife:
    request_id: int
    arrived: int
    finished: int | None = None
    reason: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    scheduled: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    # (step, kind "prefill" | "decode", tokens, window start, window end)
    work: list[tuple[int, str, int, int, int]] = field(default_factory=list)


def _dur(start: int, end: int) -> float:
    return round(max(end - start, 0) / 1000.0, 3)


def trace_origin(events: list[Any]) -> int:
    """The ns timestamp that becomes ts 0 in the trace: the earliest time in the stream."""
    if not events:
        return 0
    return min(min(e.ts for e in events), min((e.start for e in events if e.kind == Kind.KERNEL), default=events[0].ts))


def build_chrome_trace(events: Iterable[Any], metadata: dict[str, Any] | None = None,
                       origin: int | None = None) -> dict[str, Any]:
    """The trace as a JSON-ready dict {"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}};
    origin: the ns that becomes ts 0 (default: the stream's earliest time)."""
    events = list(events)
    if not events:
        return {"traceEvents": [], "displayTimeUnit": "ns", "otherData": dict(metadata or {})}
    t0 = trace_origin(events) if origin is None else origin
    clock = TraceClock(t0)
    trace = _TraceBuilder(clock)
    trace.take_all(events)
    out = trace.out
    for step, kernels in trace.kernels_by_step.items():
        out += _kernel_events(kernels, trace.step_ends.get(step), clock)
    for ts, drafted, accepted in trace.spec_by_step.values():
        out.append({"name": "spec decode", "ph": "C", "pid": PID_ENGINE, "ts": clock.us(ts),
                    "args": {"draft tokens": drafted, "accepted": accepted}})
    last_ts = max(t0, max(e.ts for e in events))
    flow_id = 0
    for life in sorted(trace.lives.values(), key=lambda r: r.request_id):
        segments, lifetime, flows = _request_segments(life, last_ts)
        out += _request_events(life, lifetime, segments, clock)
        for ts in flows:
            flow_id += 1
            out += _flow(life.request_id, ts, flow_id, clock)
    other = {"clock": "perf_counter_ns", "t0_ns": t0}
    if trace.info is not None:
        other["run_info"] = _info_args(trace.info)
        if trace.info.device.startswith("simulated"):  # kvscope.engine.sim.setup's label: say so everywhere
            other["clock"] = "virtual ns of a simulated device (kernel times estimated by the cost model)"
            for e in out:
                if e.get("name") == "process_name" and e.get("pid") == PID_ENGINE:
                    e["args"] = {"name": f"kvscope engine ({trace.info.device})"}
    other.update(metadata or {})
    ordered = _ordered(out)
    fit_slices(ordered, clock)
    return {"traceEvents": ordered, "displayTimeUnit": "ns", "otherData": other}


class _TraceBuilder(EventFold):
    """Folds the events into trace records; kernels and request lives are kept for the layout passes
    that need a whole step or a whole request."""

    def __init__(self, clock: TraceClock) -> None:
        self.clock = clock
        self.out: list[dict[str, Any]] = _metadata_events()
        self.lives: dict[int, _RequestLife] = {}
        self.info: RunInfo | None = None
        self.kernels_by_step: dict[int, list[KernelEvent]] = {}
        self.step_ends: dict[int, StepEnd] = {}
        self.spec_by_step: dict[int, list[int]] = {}  # step -> [ts, draft tokens, accepted]

    def on_spec_decode(self, e: SpecDecode) -> None:
        acc = self.spec_by_step.setdefault(e.step, [e.ts, 0, 0])
        acc[1] += e.num_draft_tokens
        acc[2] += e.num_accepted

    def on_kernel(self, e: KernelEvent) -> None:
        self.kernels_by_step.setdefault(e.step, []).append(e)

    def on_step_end(self, e: StepEnd) -> None:
        self.step_ends[e.step] = e
        self.out += _step_events(e, self.clock)
        self.out += _step_counters(e, self.clock)
        _note_work(e, self.lives)

    def on_request(self, e: RequestEvent) -> None:
        _note_request(e, self.lives)

    def on_block(self, e: BlockEvent) -> None:
        self.out.append(_block_instant(e, self.clock))

    def on_kv(self, e: KVSnapshot) -> None:
        self.out += _kv_counters(e, self.clock)

    def on_run_info(self, e: RunInfo) -> None:
        self.info = e
        self.out.append({"name": Kind.RUN_INFO, "ph": "i", "s": "p", "pid": PID_ENGINE, "tid": TID_STEPS,
                         "ts": self.clock.us(e.ts), "args": _info_args(e)})


def write_chrome_trace(path: str | Path, events: Iterable[Any], metadata: dict[str, Any] | None = None,
                       extra_events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build and write trace.json; extra_events (e.g. torch.profiler's) are appended as they are."""
    trace = build_chrome_trace(events, metadata)
    if extra_events:
        trace["traceEvents"].extend(extra_events)
    Path(path).write_text(json.dumps(trace, separators=(",", ":")), encoding="utf-8")
    return trace


# --------------------------------------------------------------------------- pieces
def _metadata_events() -> list[dict[str, Any]]:
    def meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args}

    return [
        meta("process_name", PID_ENGINE, 0, {"name": "kvscope engine"}),
        meta("process_sort_index", PID_ENGINE, 0, {"sort_index": 0}),
        meta("thread_name", PID_ENGINE, TID_STEPS, {"name": "steps"}),
        meta("thread_sort_index", PID_ENGINE, TID_STEPS, {"sort_index": 0}),
        meta("thread_name", PID_ENGINE, TID_KERNELS, {"name": "kernels"}),
        meta("thread_sort_index", PID_ENGINE, TID_KERNELS, {"sort_index": 1}),
        meta("thread_name", PID_ENGINE, TID_BLOCKS, {"name": "blocks"}),
        meta("thread_sort_index", PID_ENGINE, TID_BLOCKS, {"sort_index": 2}),
        meta("process_name", PID_REQUESTS, 0, {"name": "requests"}),
        meta("process_sort_index", PID_REQUESTS, 0, {"sort_index": 1}),
    ]


def _info_args(info: Any) -> dict[str, Any]:
    return {"model": info.model, "num_layers": info.num_layers, "device": info.device, "backend": info.backend,
            "policy": info.policy, "num_blocks": info.num_blocks, "block_size": info.block_size,
            "max_num_batched_tokens": info.max_num_batched_tokens, "prefix_caching": info.prefix_caching}


def _x(name: str, cat: str, pid: int, tid: int, start: int, end: int, clock: TraceClock,
       args: dict[str, Any] | None = None) -> dict[str, Any]:
    ev = {"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid, "ts": clock.us(start), "dur": _dur(start, end),
          START_NS: start, END_NS: end}  # the exact times, until fit_slices sets the final ts and dur
    if args:
        ev["args"] = args
    return ev


def _step_events(e: Any, clock: TraceClock) -> list[dict[str, Any]]:
    args = {"num_tokens": e.num_tokens, "max_num_batched_tokens": e.max_num_batched_tokens,
            "prefill": [list(p) for p in e.prefill], "decode": list(e.decode), "running": e.num_running,
            "waiting": e.num_waiting}
    out = [_x(f"step {e.step}", RangeCategory.STEP, PID_ENGINE, TID_STEPS, e.begin_ts, e.ts, clock, args)]
    for name, start, end in e.phases:
        out.append(_x(name, RangeCategory.PHASE, PID_ENGINE, TID_STEPS, start, end, clock, {"step": e.step}))
    return out


def _step_counters(e: Any, clock: TraceClock) -> list[dict[str, Any]]:
    ts = clock.us(e.ts)
    return [
        {"name": "requests", "ph": "C", "pid": PID_ENGINE, "ts": ts,
         "args": {"running": e.num_running, "waiting": e.num_waiting}},
        {"name": "tokens per step", "ph": "C", "pid": PID_ENGINE, "ts": ts,
         "args": {"tokens": e.num_tokens, "padding": e.padding_tokens}},
    ]


def _kv_counters(kv: Any, clock: TraceClock) -> list[dict[str, Any]]:
    frag = fragmentation(kv)
    ts = clock.us(kv.ts)
    return [
        {"name": "KV blocks", "ph": "C", "pid": PID_ENGINE, "ts": ts,
         "args": {"used": kv.used_blocks, "cached": kv.cached_blocks, "free": kv.free_blocks}},
        {"name": "KV waste %", "ph": "C", "pid": PID_ENGINE, "ts": ts,
         "args": {"internal": round(100 * frag.internal, 3), "contiguous": round(100 * frag.contiguous_waste, 3)}},
    ]


def _block_instant(e: Any, clock: TraceClock) -> dict[str, Any]:
    return {"name": e.what, "cat": Kind.BLOCK, "ph": "i", "s": "t", "pid": PID_ENGINE, "tid": TID_BLOCKS,
            "ts": clock.us(e.ts), "args": {"request": e.request_id, "blocks": list(e.block_ids),
                                          "logical_index": e.logical_index, "ref_counts": list(e.ref_counts)}}


def _kernel_events(kernels: list[Any], step_end: Any, clock: TraceClock) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    step = kernels[0].step
    if step_end is not None:
        # On a GPU kernel times are device times, which may run past the host's forward phase (the host
        # only launches); the kernels track's containers stretch to hold them, forward first, then sample.
        # (the sample phase runs one op, named after it)
        device_end = max((k.end for k in kernels if k.op != Phase.SAMPLE), default=0)
        forward_end = 0
        for name, start, end in step_end.phases:
            if name == Phase.FORWARD:
                forward_end = max(end, device_end)
                out.append(_x(name, RangeCategory.PHASE, PID_ENGINE, TID_KERNELS, start, forward_end, clock,
                              {"step": step}))
            elif name == Phase.SAMPLE:
                start = max(start, forward_end)
                out.append(_x(name, RangeCategory.PHASE, PID_ENGINE, TID_KERNELS, start, max(end, start), clock,
                              {"step": step}))
    layers: dict[int, list[int]] = {}
    for k in kernels:
        if k.layer >= 0:
            span = layers.setdefault(k.layer, [k.start, k.end])
            span[0] = min(span[0], k.start)
            span[1] = max(span[1], k.end)
        out.append(_x(k.op, RangeCategory.KERNEL, PID_ENGINE, TID_KERNELS, k.start, k.end, clock,
                      {"step": step, "layer": k.layer, "backend": k.backend, "shapes": k.shapes,
                       "flops": k.flops, "bytes": k.bytes}))
    for layer, (start, end) in layers.items():
        out.append(_x(f"layer {layer}", "layer", PID_ENGINE, TID_KERNELS, start, end, clock, {"step": step}))
    return out


def _note_request(e: Any, lives: dict[int, _RequestLife]) -> None:
    life = lives.get(e.request_id)
    if life is None:
        life = lives[e.request_id] = _RequestLife(e.request_id, e.ts)
    life.prompt_tokens = e.prompt_tokens
    life.output_tokens = e.output_tokens
    what = e.what
    if what == ARRIVED:
        life.arrived = e.ts
    elif what == SCHEDULED:
        life.scheduled.append(e.ts)
    elif what == PREEMPTED:
        life.preempted.append(e.ts)
    elif what == RESUMED:
        life.resumed.append(e.ts)
    elif what == FINISHED:
        life.finished = e.ts
        life.reason = e.reason


def _note_work(e: Any, lives: dict[int, _RequestLife]) -> None:
    start = e.begin_ts
    for name, _, end in e.phases:
        if name == Phase.SCHEDULE:
            start = end
    for rid, n in e.prefill:
        if rid in lives:
            lives[rid].work.append((e.step, "prefill", n, start, e.ts))
    for rid in e.decode:
        if rid in lives:
            lives[rid].work.append((e.step, "decode", 1, start, e.ts))


def _request_segments(life: _RequestLife, trace_end: int) -> tuple[list[_Segment], _Segment, list[int]]:
    """The request's phase slices, its lifetime slice and the flow timestamps (one per step served)."""
    end = life.finished if life.finished is not None else trace_end
    lifetime = _Segment(f"request {life.request_id}", life.arrived, end,
                        {"prompt_tokens": life.prompt_tokens, "output_tokens": life.output_tokens,
                         "finish_reason": life.reason or ("unfinished" if life.finished is None else ""),
                         "preemptions": len(life.preempted)})

    def clamp(t: int) -> int:
        return min(max(t, life.arrived), end)

    segments: list[_Segment] = []
    first_sched = life.scheduled[0] if life.scheduled else (life.resumed[0] if life.resumed else end)
    segments.append(_Segment("queued", life.arrived, clamp(first_sched)))
    resumes = sorted(life.resumed)
    for p in sorted(life.preempted):
        r = next((t for t in resumes if t >= p), end)
        segments.append(_Segment("preempted", clamp(p), clamp(r)))
    breaks = sorted(life.preempted)
    flows: list[int] = []
    run: list[tuple[int, int, int]] = []  # (step, start, end) of consecutive decode steps

    def close_run() -> None:
        if run:
            segments.append(_Segment("decoding", clamp(run[0][1]), clamp(run[-1][2]),
                                     {"steps": len(run), "first_step": run[0][0]}))
            run.clear()

    for step, kind, n, start, stop in sorted(life.work):
        if run and any(run[-1][2] <= b <= start for b in breaks):
            close_run()
        if kind == "prefill":
            close_run()
            segments.append(_Segment("prefill", clamp(start), clamp(stop), {"step": step, "tokens": n}))
        else:
            run.append((step, start, stop))
        flows.append(clamp(start))
    close_run()
    segments.sort(key=lambda s: (s.start, -(s.end - s.start)))
    return segments, lifetime, flows


def _request_events(life: _RequestLife, lifetime: _Segment, segments: list[_Segment],
                    clock: TraceClock) -> list[dict[str, Any]]:
    rid = life.request_id
    tid = request_tid(rid)
    out: list[dict[str, Any]] = [
        {"name": "thread_name", "ph": "M", "pid": PID_REQUESTS, "tid": tid, "args": {"name": f"request {rid}"}},
        {"name": "thread_sort_index", "ph": "M", "pid": PID_REQUESTS, "tid": tid, "args": {"sort_index": rid}},
    ]

    def async_pair(seg: _Segment, depth: int) -> list[dict[str, Any]]:
        # "_nest" orders equal timestamps: outer b before inner b, inner e before outer e
        b = {"name": seg.name, "cat": Kind.REQUEST, "ph": "b", "id": rid, "pid": PID_REQUESTS, "tid": tid,
             "ts": clock.us(seg.start), "_nest": depth}
        if seg.args:
            b["args"] = seg.args
        e = {"name": seg.name, "cat": Kind.REQUEST, "ph": "e", "id": rid, "pid": PID_REQUESTS, "tid": tid,
             "ts": clock.us(seg.end), "_nest": -depth}
        return [b, e]

    out += async_pair(lifetime, 0)
    out.append(_x(lifetime.name, Kind.REQUEST, PID_REQUESTS, tid, lifetime.start, lifetime.end, clock, lifetime.args))
    for seg in segments:
        out += async_pair(seg, 1)
        out.append(_x(seg.name, Kind.REQUEST, PID_REQUESTS, tid, seg.start, seg.end, clock, seg.args or None))
    return out


def _flow(rid: int, ts: int, flow_id: int, clock: TraceClock) -> list[dict[str, Any]]:
    t = clock.us(ts)
    return [
        {"name": "served by", "cat": "flow", "ph": "s", "id": flow_id, "pid": PID_REQUESTS,
         "tid": request_tid(rid), "ts": t},
        {"name": "served by", "cat": "flow", "ph": "f", "bp": "e", "id": flow_id, "pid": PID_ENGINE,
         "tid": TID_STEPS, "ts": t},
    ]


_PHASE_ORDER = {"M": 0, "b": 1, "X": 2, "i": 3, "C": 4, "s": 5, "f": 6, "e": 7}


def _ordered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metadata first, then by time; at equal times parents (longer X) before children, b before e."""
    ordered = sorted(events, key=lambda e: (e["ph"] != "M", e.get("ts", 0.0), _PHASE_ORDER.get(e["ph"], 9),
                                            -e.get("dur", 0.0), e.get("_nest", 0)))
    for e in ordered:
        e.pop("_nest", None)
    return ordered
