"""The Chrome trace's clock: integer nanoseconds in, microsecond floats out that nest exactly in any viewer.

A Chrome trace gives a slice as `ts` and `dur` in microseconds (floats). A viewer computes the slice's end
as `ts + dur` in floating point, and a strict one (speedscope) nests by those floats; speedscope also
rebases every `ts` on the first one of the thread before adding `dur`. With decimal microseconds
(`round(ns / 1000, 3)`) that arithmetic rounds: where a phase starts at the very nanosecond the previous
one ends, `ts + dur` lands a hair past the next slice's `ts`, the next slice becomes a child of the
previous one, and touching steps render as a staircase.

So a timestamp is rounded once, from integer nanoseconds to an integer number of ticks of 2^-10 µs (0.98 ns;
`round(tick / 1024 * 1000)` gives the nanosecond back), and written as ticks / 1024: a float with no rounding
in it. Sums and differences of such numbers are exact in float64 (below 2^53 ticks, about 100 days), so
`ts + dur`, `ts - first_ts` and every other order of the same arithmetic land exactly where the integer
ticks say: touching slices meet, children end inside their parents, whatever the viewer computes.
`fit_slices` sets each X slice's `dur` as the difference of its rounded end and start, its end clamped to
its parent's. Pure python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TICKS_PER_US = 1024
START_NS = "_start_ns"  # the integer times an X slice carries until fit_slices turns them into its dur
END_NS = "_end_ns"


class TraceClock:
    """Engine nanoseconds -> trace microseconds, through integer ticks of 1/1024 µs."""

    __slots__ = ("t0",)

    def __init__(self, t0: int) -> None:
        self.t0 = t0

    def ticks(self, ns: int) -> int:
        """Ticks since t0, rounded to the nearest (1 µs = 1024 ticks = 1000 ns)."""
        return ((ns - self.t0) * 256 + 125) // 250

    def us(self, ns: int) -> float:
        return self.ticks(ns) / TICKS_PER_US


def fit_slices(events: Iterable[dict[str, Any]], clock: TraceClock) -> None:
    """Set the `dur` of every X slice that carries its ns times (START_NS / END_NS, removed here), in the
    order the trace lists them (parents before children at equal start): on each (pid, tid) track a slice
    nests in the innermost earlier slice still open at its start (in ns), and its end is its own rounded
    end or its parent's, whichever is earlier."""
    stacks: dict[tuple[Any, Any], list[tuple[int, int]]] = {}
    for e in events:
        if e.get("ph") != "X" or START_NS not in e:
            continue
        start, end = e.pop(START_NS), e.pop(END_NS)
        stack = stacks.setdefault((e["pid"], e.get("tid")), [])
        while stack and stack[-1][0] <= start:  # ended before (or just as) this one starts: not a parent
            stack.pop()
        first = clock.ticks(start)
        last = max(clock.ticks(end), first)
        if stack:
            last = max(min(last, stack[-1][1]), first)
        e["ts"] = first / TICKS_PER_US
        e["dur"] = (last - first) / TICKS_PER_US
        stack.append((end, last))
