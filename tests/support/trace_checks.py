"""Validators of `kvscope trace` output, shared by tests/inspector/test_trace_export.py and benchmarks/gpu_check.py.

check_chrome_trace: the Chrome Trace Event rules (X slices nest on every track as a strict viewer nests them,
B/E and async b/e pair up, flows have both ends); check_kernels_inside_forward: every kernel slice lies inside
its step's forward (or sample) phase, on the host's steps track (CPU) or, with `device=True`, inside the
kernels track's containers, which start with the host phase and stretch to hold device (CUDA-event) times;
check_request_lifetimes: request lives match the recording; check_nvtxt: trace.nvtxt parsed against the
layouts it declares. Plain python over parsed JSON (no torch).
"""

from __future__ import annotations

import re
from collections import defaultdict

from kvscope.events.vocabulary import ARRIVED, FINISHED


def ns(us: float) -> int:
    return round(us * 1000)


def check_chrome_trace(trace: dict) -> dict:
    """Assert the Chrome Trace Event rules; returns the parsed pieces for further checks."""
    events = trace["traceEvents"]
    by_track: dict[tuple, list[dict]] = defaultdict(list)
    open_b: dict[tuple, list[str]] = defaultdict(list)
    async_open: dict[tuple, list[str]] = defaultdict(list)
    flows: dict[int, dict[str, dict]] = defaultdict(dict)
    for e in events:
        ph = e["ph"]
        assert ph in "MXBEbesfCi", e
        if ph == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index", "process_sort_index")
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        track = (e["pid"], e.get("tid"))
        if ph in "XBEi":
            by_track[track].append(e)
        if ph == "B":
            open_b[track].append(e["name"])
        elif ph == "E":
            assert open_b[track], f"E without B on {track}"
            open_b[track].pop()
        elif ph in "be":
            key = (e["pid"], e["cat"], e["id"])
            by_track[("async",) + key].append(e)
            if ph == "b":
                async_open[key].append(e["name"])
            else:
                assert async_open[key] and async_open[key][-1] == e["name"], f"async e out of order: {e}"
                async_open[key].pop()
        elif ph == "C":
            assert e["args"] and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in e["args"].values()), e
        elif ph in "sf":
            flows[e["id"]][ph] = e
    assert not any(open_b.values()), "B without E"
    assert not any(async_open.values()), "async b without e"
    for track, evs in by_track.items():
        times = [e["ts"] for e in evs]
        assert times == sorted(times), f"timestamps go back on {track}"
        slices = [e for e in evs if e["ph"] == "X"]
        check_float_nesting(slices, track)
        if slices:
            check_float_nesting(rebased(slices), track)  # as speedscope computes them
    for fid, pair in flows.items():
        assert set(pair) == {"s", "f"}, f"flow {fid} is missing an end"
        assert pair["f"].get("bp") in ("e", "t")
    return {"events": events, "flows": flows}


def check_float_nesting(slices: list[dict], track: tuple = ()) -> None:
    """X slices of one track nest as a strict viewer (speedscope) nests them: by the float `ts + dur` the
    viewer computes, with no tolerance. A slice that starts at or after the end of the slice on top of the
    stack is not its child (touching siblings), otherwise it must end no later than that parent."""
    stack: list[float] = []
    for e in slices:
        start, end = e["ts"], e["ts"] + e["dur"]
        while stack and stack[-1] <= start:
            stack.pop()
        if stack:
            assert end <= stack[-1], (f"X slice {e['name']} at {start} ends at {end!r}, after its parent"
                                      f" ({stack[-1]!r}) on {track}")
        stack.append(end)


def check_kernels_inside_forward(trace: dict, device: bool = False) -> int:
    """Every kernel slice inside its step's forward / sample slice; returns how many kernel slices there are.

    device=False: the steps track's (tid 1) host phases hold them (CPU times). device=True: the kernels
    track's (tid 2) containers hold them, and each container starts where the host phase starts, so no
    kernel starts before the host began launching its step."""
    host, containers = {}, {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e.get("cat") == "phase" and e["tid"] in (1, 2):
            target = host if e["tid"] == 1 else containers
            target[(e["args"]["step"], e["name"])] = (e["ts"], e["ts"] + e["dur"])
    holders = containers if device else host
    count = 0
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e.get("cat") == "kernel":
            key = (e["args"]["step"], "sample" if e["name"] == "sample" else "forward")
            lo, hi = holders[key]
            assert lo <= e["ts"] and e["ts"] + e["dur"] <= hi, e
            if device:
                assert host[key][0] <= e["ts"], f"kernel {e['name']} of step {key[0]} starts before its host phase"
            count += 1
    return count


def device_overrun_steps(trace: dict) -> int:
    """Steps whose kernels-track forward container ends after the host's forward phase: the device was still
    running the step's kernels when the host had finished launching them (expected on a GPU, never on CPU)."""
    ends: dict[tuple[int, int], float] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e.get("cat") == "phase" and e["name"] == "forward" and e["tid"] in (1, 2):
            ends[(e["args"]["step"], e["tid"])] = e["ts"] + e["dur"]
    return sum(1 for (step, tid), end in ends.items() if tid == 2 and end > ends.get((step, 1), end))


def check_request_lifetimes(trace: dict, events: list) -> None:
    t0 = trace["otherData"]["t0_ns"]
    arrived = {e.request_id: e.ts for e in events if e.kind == "request" and e.what == ARRIVED}
    finished = {e.request_id: e.ts for e in events if e.kind == "request" and e.what == FINISHED}
    lifetimes = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] in "be" and e["name"].startswith("request "):
            lifetimes[int(e["name"].split()[1])].append(e)
    assert set(lifetimes) == set(arrived)
    for rid, (b, e) in lifetimes.items():
        assert (b["ph"], e["ph"]) == ("b", "e") and b["id"] == e["id"] == rid
        assert ns(b["ts"]) == arrived[rid] - t0 and ns(e["ts"]) == finished[rid] - t0


NVTXT_RECORD = re.compile(r'^(\w+), (.*)$')


def check_nvtxt(lines: list[str]) -> int:
    """Parse NVTXT line by line against its declared layouts; returns the number of records."""
    layouts: dict[str, list[str]] = {}
    variables: dict[str, str] = {}
    records = 0
    for n, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            name, *fields = [p.strip() for p in line[1:].split(",")]
            layouts[name] = fields
            continue
        if " = " in line:
            key, value = line.split(" = ", 1)
            assert re.fullmatch(r"\w+", key), f"line {n}: bad variable {key!r}"
            variables[key] = value
            continue
        m = NVTXT_RECORD.match(line)
        assert m, f"line {n}: not a record: {line!r}"
        kind, rest = m.groups()
        if kind == "SetFileDisplayName":
            continue
        assert kind in layouts, f"line {n}: {kind} has no declared layout"
        values = re.findall(r'"[^"]*"|[^,]+', rest)
        values = [v.strip() for v in values]
        assert len(values) == len(layouts[kind]), f"line {n}: {len(values)} fields, layout has {len(layouts[kind])}"
        row = dict(zip(layouts[kind], values))
        for key in ("Start", "End", "Time", "ThreadId"):
            if key in row:
                assert re.fullmatch(r"\d+", row[key]), f"line {n}: {key} is not an integer: {row[key]!r}"
        assert row["Message"].startswith('"') and row["Message"].endswith('"') and row["Message"].count('"') == 2
        if "Start" in row:
            assert int(row["Start"]) <= int(row["End"]), f"line {n}: range ends before it starts"
        assert "ProcessId" in variables and "TimeBase" in variables, f"line {n}: record before ProcessId/TimeBase"
        records += 1
    return records



def rebased(slices: list[dict]) -> list[dict]:
    """The slices as speedscope reads them: every ts rebased on the track's first one, before ts + dur."""
    first = min(e["ts"] for e in slices)
    return [dict(e, ts=e["ts"] - first) for e in slices]

