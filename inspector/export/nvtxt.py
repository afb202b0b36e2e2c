"""NVTXT export: the NVTX text format that Nsight Systems' ImportNvtxt turns into a report.

    ImportNvtxt --cmd create -n trace.nvtxt -o trace.nsys-rep

The file declares two record layouts and then writes one record a line:
    @RangeStartEnd, Start, End, ThreadId, Message
    @Marker, Time, ThreadId, Message
Attributes that are not in a layout (ProcessId, CategoryId, Color, TimeBase) are variables:
an assignment `Name = value` holds for the records that follow it, so the writer groups
records by kind and sets CategoryId / Color before each group. Times are the engine's
monotonic ns (TimeBase = Manual: taken as given). Messages are double-quoted; quotes and
line breaks inside them are replaced.

Threads: 1 steps, 2 phases, 3 kernels (one row per layer would hide nesting; kernels nest
under the forward phase by time), 1000 + N request N's lifetime; markers for preemptions
and first tokens go on the request's thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kvscope.events.records import KernelEvent, RequestEvent, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, FIRST_TOKEN, PREEMPTED, RESUMED, Kind, Phase, RangeCategory
from kvscope.inspector.event_fold import EventFold

THREAD_STEPS = 1
THREAD_PHASES = 2
THREAD_KERNELS = 3
THREAD_REQUEST_BASE = 1000

MARKER = "marker"
# record group -> (category id, colour); colours per phase as in the live NVTX ranges
GROUPS = {
    RangeCategory.STEP: (1, "Blue"),
    Phase.SCHEDULE: (2, "Yellow"),
    Phase.PREPARE: (2, "Cyan"),
    Phase.FORWARD: (2, "Green"),
    Phase.SAMPLE: (2, "Magenta"),
    RangeCategory.KERNEL: (3, "Green"),
    Kind.REQUEST: (4, "Blue"),
    MARKER: (5, "Red"),
}

LAYOUTS = (
    "@RangeStartEnd, Start, End, ThreadId, Message",
    "@Marker, Time, ThreadId, Message",
)


def quote(message: str) -> str:
    """A double-quoted NVTXT message (no quotes or line breaks inside)."""
    return '"' + message.replace('"', "'").replace("\r", " ").replace("\n", " ") + '"'


def nvtxt_lines(events: Iterable[Any], process_id: int | None = None, title: str = "kvscope") -> list[str]:
    """The NVTXT file as lines (no newlines)."""
    events = list(events)
    pid = process_id if process_id is not None else os.getpid()
    records = _NvtxtRecords()
    records.take_all(events)
    groups = records.groups
    last = max((e.ts for e in events), default=0)
    for rid, start in records.arrived.items():  # unfinished requests end with the trace
        groups[Kind.REQUEST].append(_range(start, max(start, last), THREAD_REQUEST_BASE + rid,
                                           f"request {rid} (unfinished)"))
    title = title.replace(",", " ").replace("\n", " ") or "kvscope"
    lines = [f"# kvscope trace: {title}", "# import: ImportNvtxt --cmd create -n trace.nvtxt -o trace.nsys-rep",
             f"SetFileDisplayName, {title}"]
    lines += LAYOUTS
    lines += [f"ProcessId = {pid}", "TimeBase = Manual"]
    for name, group in groups.items():
        if not group:
            continue
        category, color = GROUPS[name]
        lines += [f"# {name}", f"CategoryId = {category}", f"Color = {color}"]
        lines += group
    return lines


class _NvtxtRecords(EventFold):
    """The records of each group, in event order; `arrived` holds the requests not finished yet."""

    def __init__(self) -> None:
        self.groups: dict[str, list[str]] = {name: [] for name in GROUPS}
        self.arrived: dict[int, int] = {}

    def on_step_end(self, e: StepEnd) -> None:
        groups = self.groups
        groups[RangeCategory.STEP].append(_range(e.begin_ts, e.ts, THREAD_STEPS,
                                                 f"step {e.step} ({e.num_tokens} tokens)"))
        for name, start, end in e.phases:
            group = name if name in groups else Phase.FORWARD
            groups[group].append(_range(start, end, THREAD_PHASES, name))

    def on_kernel(self, e: KernelEvent) -> None:
        where = f"L{e.layer}" if e.layer >= 0 else ""
        label = f"{e.op} {where}".strip()
        self.groups[RangeCategory.KERNEL].append(_range(e.start, e.end, THREAD_KERNELS, label))

    def on_request(self, e: RequestEvent) -> None:
        tid = THREAD_REQUEST_BASE + e.request_id
        if e.what == ARRIVED:
            self.arrived[e.request_id] = e.ts
        elif e.what == FINISHED:
            start = self.arrived.pop(e.request_id, e.ts)
            self.groups[Kind.REQUEST].append(_range(start, e.ts, tid, f"request {e.request_id} ({e.reason})"))
        if e.what in (FIRST_TOKEN, PREEMPTED, RESUMED):
            self.groups[MARKER].append(f"Marker, {e.ts}, {tid}, {quote(f'request {e.request_id} {e.what}')}")


def _range(start: int, end: int, tid: int, message: str) -> str:
    return f"RangeStartEnd, {start}, {max(start, end)}, {tid}, {quote(message)}"


def write_nvtxt(path: str | Path, events: Iterable[Any], process_id: int | None = None,
                title: str = "kvscope") -> int:
    """Write trace.nvtxt; returns the number of records."""
    lines = nvtxt_lines(events, process_id, title)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sum(1 for line in lines if line.startswith(("RangeStartEnd,", "Marker,")))
