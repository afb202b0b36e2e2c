"""The Chrome trace's clock: integer nanoseconds in, microsecond floats out that nest exactly.

A Chrome trace gives a slice as `ts` and `dur` in microseconds (floats; here with ns precision, three
decimals). A viewer computes the slice's end as `ts + dur` in floating point, and a strict one (speedscope)
nests by those floats: where one phase starts at the very nanosecond the previous one ends, a `ts + dur`
that rounds a hair past the next slice's `ts` makes the next slice a child of the previous one, and a
trace of touching steps and phases renders as a staircase.

So every timestamp is rounded once from integer nanoseconds (`TraceClock.us`), and `fit_slices` then sets
each X slice's `dur` so that, in float arithmetic, the slice ends exactly at its rounded end time (or, when
that is not representable as `ts + dur`, just before it), and never after its parent's end. Touching
siblings then meet exactly (`a.ts + a.dur == b.ts`) and no child outlives its parent. Pure python.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

START_NS = "_start_ns"  # the integer times an X slice carries until fit_slices turns them into its dur
END_NS = "_end_ns"


class TraceClock:
    """Engine nanoseconds -> trace microseconds, rounded once (three decimals: ns precision)."""

    __slots__ = ("t0",)

    def __init__(self, t0: int) -> None:
        self.t0 = t0

    def us(self, ns: int) -> float:
        return round((ns - self.t0) / 1000.0, 3)


def fit_duration(ts: float, dur: float, end: float) -> float:
    """The duration that makes the float `ts + dur` equal `end` (`dur` itself when it already does), or the
    largest one that stays below `end` when no float sum lands on it exactly; never negative."""
    if ts + dur == end:
        return dur
    d = end - ts
    for _ in range(4):  # the float difference lands within an ulp or two of the exact one
        total = ts + d
        if total == end:
            return d
        d = math.nextafter(d, math.inf if total < end else -math.inf)
    while d > 0 and ts + d > end:
        d = math.nextafter(d, -math.inf)
    return max(d, 0.0)


def fit_slices(events: Iterable[dict[str, Any]], clock: TraceClock) -> None:
    """Set the `dur` of every X slice that carries its ns times (START_NS / END_NS, removed here), in the
    order the trace lists them (parents before children at equal start): on each (pid, tid) track a slice
    nests in the innermost earlier slice still open at its start (in ns), and ends, in floats, at its own
    rounded end or its parent's float end, whichever is earlier."""
    stacks: dict[tuple[Any, Any], list[tuple[int, float]]] = {}
    for e in events:
        if e.get("ph") != "X" or START_NS not in e:
            continue
        start, end = e.pop(START_NS), e.pop(END_NS)
        stack = stacks.setdefault((e["pid"], e.get("tid")), [])
        while stack and stack[-1][0] <= start:  # ended before (or just as) this one starts: not a parent
            stack.pop()
        limit = clock.us(max(end, start))
        if stack:
            limit = min(limit, stack[-1][1])
        ts = e["ts"]
        dur = fit_duration(ts, round(max(end - start, 0) / 1000.0, 3), max(limit, ts))
        e["dur"] = dur
        stack.append((end, ts + dur))
