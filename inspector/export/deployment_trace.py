"""The Chrome trace of a disaggregated deployment: each engine's own trace as its own processes, one KV
transfer process, and flow arrows that follow a request from engine to engine.

    pid 100k + 1 / 100k + 2   "<engine>: kvscope engine" / "<engine>: requests": kvscope.inspector.export.chrome_trace's
                              layout for the k-th engine (steps, kernels, blocks, counters; request threads)
    pid 900 "KV transfer"     "receive by <engine>": X "kv transfer P→D" from a decode engine asking for the
                              blocks to their landing in its cache (reads under way side by side take extra
                              lanes, "(2)", ...); "send by <engine>": X "read P", a prefill engine reading its
                              pinned blocks out (or a simulated link carrying them); args: request ids, blocks,
                              bytes, transport
    flows                     "kv transfer": the prefill request's last slice → its transfer → the decode
                              request's first decode step

Every engine's trace shares one origin (ts 0), and every time is on the clock the events carry: in one
process, the same monotonic clock; from Ray actors, shifted onto the driver's at receipt
(kvscope.engine.disagg.ray_engine). Pure python.
"""

from __future__ import annotations

from typing import Any

from kvscope.events.records import KVTransfer
from kvscope.inspector.export.chrome_trace import (
    PID_ENGINE,
    PID_REQUESTS,
    build_chrome_trace,
    request_tid,
    trace_origin,
)
from kvscope.inspector.export.trace_clock import TraceClock

PID_TRANSFER = 900
TID_RECEIVE = 1       # + 100 x the receiving engine's index + its lane
TID_SEND = 50_001     # + 100 x the sending engine's index + its lane
PID_STRIDE = 100
FLOW_STRIDE = 1_000_000


def engine_pid(index: int, pid: int) -> int:
    """Where the index-th engine's process `pid` (PID_ENGINE / PID_REQUESTS) goes in the deployment's trace."""
    return PID_STRIDE * (index + 1) + pid


def build_deployment_trace(streams: dict[str, list[Any]], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trace of several engines' event streams (engine id -> events), as a JSON-ready dict."""
    nonempty = [events for events in streams.values() if events]
    t0 = min(trace_origin(events) for events in nonempty) if nonempty else 0
    clock = TraceClock(t0)
    out: list[dict[str, Any]] = []
    index = {name: i for i, name in enumerate(streams)}
    first_slices: dict[tuple[str, int], list[dict[str, Any]]] = {}
    other: dict[str, Any] = {"clock": "perf_counter_ns", "t0_ns": t0, "engines": {}}
    for name, events in streams.items():
        i = index[name]
        trace = build_chrome_trace(events, None, t0)
        other["engines"][name] = trace["otherData"].get("run_info", {})
        for e in trace["traceEvents"]:
            e["pid"] = engine_pid(i, e["pid"])
            if e["ph"] in "sf":
                e["id"] += FLOW_STRIDE * (i + 1)
            if e["ph"] == "M" and e["name"] == "process_name":
                e["args"] = {"name": f"{name}: {e['args']['name']}"}
            elif e["ph"] == "M" and e["name"] == "process_sort_index":
                e["args"] = {"sort_index": e["pid"]}
            if e["ph"] == "X" and e["pid"] == engine_pid(i, PID_REQUESTS) and e["name"] != f"request {e['tid'] - 1}":
                first_slices.setdefault((name, e["tid"] - 1), []).append(e)
            out.append(e)
    transfers = sorted((e for events in streams.values() for e in events if isinstance(e, KVTransfer)),
                       key=lambda e: e.recv_start)
    if transfers:
        out += _transfer_events(transfers, clock, index, first_slices)
    other.update(metadata or {})
    return {"traceEvents": out, "displayTimeUnit": "ns", "otherData": other}


def _transfer_events(transfers: list[KVTransfer], clock: TraceClock, index: dict[str, int],
                     slices: dict[tuple[str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": PID_TRANSFER, "tid": 0, "args": {"name": "KV transfer"}},
        {"name": "process_sort_index", "ph": "M", "pid": PID_TRANSFER, "tid": 0, "args": {"sort_index": PID_TRANSFER}},
    ]
    lanes = _Lanes(out)
    flows: list[dict[str, Any]] = []
    flow_id = 0
    reads = sorted((t for t in transfers if t.ok), key=lambda t: t.send_start)
    for t in reads:  # the senders' side, in the order the reads started
        s_start, s_end = _span(t.send_start, t.send_end, clock)
        send_tid = lanes.place(TID_SEND, index.get(t.src_engine, 0), f"send by {t.src_engine}", s_start, s_end)
        out.append({"name": f"read {t.src_request_id}", "cat": "kv_transfer", "ph": "X", "pid": PID_TRANSFER,
                    "tid": send_tid, "ts": s_start, "dur": s_end - s_start, "args": {"transfer_id": t.transfer_id}})
    for t in transfers:  # the receivers' side (transfers come sorted by recv_start)
        args = {"transfer_id": t.transfer_id, "from": f"{t.src_engine} request {t.src_request_id}",
                "to": f"{t.dst_engine} request {t.dst_request_id}", "src_blocks": list(t.src_block_ids),
                "dst_blocks": list(t.dst_block_ids), "tokens": t.num_tokens, "bytes": t.bytes,
                "transport": t.transport, "ok": t.ok}
        if t.error:
            args["error"] = t.error
        start, end = _span(t.recv_start, t.recv_end, clock)
        tid = lanes.place(TID_RECEIVE, index.get(t.dst_engine, 0), f"receive by {t.dst_engine}", start, end)
        out.append({"name": f"kv transfer {t.src_request_id}→{t.dst_request_id}", "cat": "kv_transfer", "ph": "X",
                    "pid": PID_TRANSFER, "tid": tid, "ts": start, "dur": end - start, "args": args})
        src = slices.get((t.src_engine, t.src_request_id))
        dst = [e for e in slices.get((t.dst_engine, t.dst_request_id), []) if e["ts"] >= end]
        if src:
            flow_id += 1
            last = max(src, key=lambda e: e["ts"])
            flows += _flow_pair(flow_id, last["pid"], last["tid"], last["ts"], PID_TRANSFER, tid, start)
        if dst:
            flow_id += 1
            first = min(dst, key=lambda e: e["ts"])
            flows += _flow_pair(flow_id, PID_TRANSFER, tid, start, first["pid"], first["tid"], first["ts"])
    return out + flows


class _Lanes:
    """Tracks of the KV transfer process: per engine and side, as many lanes as transfers overlap in time (reads
    run side by side); each slice goes to the first lane free at its start."""

    LANES_PER_ENGINE = 100

    def __init__(self, meta: list[dict[str, Any]]) -> None:
        self.meta = meta
        self.ends: dict[int, float] = {}  # tid -> end of its last slice

    def place(self, base: int, engine_index: int, label: str, start: float, end: float) -> int:
        first = base + engine_index * self.LANES_PER_ENGINE
        lane = 0
        while self.ends.get(first + lane, -1.0) > start:
            lane += 1
        tid = first + lane
        if tid not in self.ends:
            self.meta.append({"name": "thread_name", "ph": "M", "pid": PID_TRANSFER, "tid": tid,
                              "args": {"name": label if not lane else f"{label} ({lane + 1})"}})
            self.meta.append({"name": "thread_sort_index", "ph": "M", "pid": PID_TRANSFER, "tid": tid,
                              "args": {"sort_index": tid}})
        self.ends[tid] = end
        return tid


def _span(start_ns: int, end_ns: int, clock: TraceClock) -> tuple[float, float]:
    start = clock.us(start_ns)
    return start, max(clock.us(end_ns), start)


def _flow_pair(flow_id: int, pid_from: int, tid_from: int, ts_from: float, pid_to: int, tid_to: int,
               ts_to: float) -> list[dict[str, Any]]:
    fid = PID_TRANSFER * FLOW_STRIDE + flow_id
    return [
        {"name": "kv transfer", "cat": "flow", "ph": "s", "id": fid, "pid": pid_from, "tid": tid_from, "ts": ts_from},
        {"name": "kv transfer", "cat": "flow", "ph": "f", "bp": "e", "id": fid, "pid": pid_to, "tid": tid_to,
         "ts": ts_to},
    ]


__all__ = ["PID_ENGINE", "PID_REQUESTS", "PID_TRANSFER", "build_deployment_trace", "engine_pid", "request_tid"]
