"""Per-step history for the TUI's plots: tokens, batch composition, time and analytic cost of
each scheduler step, folded from the event stream (live or replayed).

A step's KernelEvents arrive before its StepEnd; their FLOPs and bytes (from the analytic
model) are summed into the step's record when the StepEnd arrives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class StepRecord:
    """One finished scheduler step."""

    step: int
    num_tokens: int
    prefill_tokens: int
    decode_tokens: int
    token_budget: int
    sampled_tokens: int
    duration_ns: int          # StepBegin to StepEnd
    forward_ns: int           # the "forward" phase (or the kernels' span when phases are missing)
    kernel_ns: int            # sum of kernel durations
    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte (0 when no bytes were recorded)."""
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def achieved_flops(self) -> float:
        return self.flops * 1e9 / self.forward_ns if self.forward_ns > 0 else 0.0

    @property
    def achieved_bytes(self) -> float:
        return self.bytes * 1e9 / self.forward_ns if self.forward_ns > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second over this step's wall time."""
        return self.sampled_tokens * 1e9 / self.duration_ns if self.duration_ns > 0 else 0.0


class StepHistory:
    """A bus subscriber keeping the last `maxlen` StepRecords."""

    def __init__(self, maxlen: int = 240) -> None:
        self.records: deque[StepRecord] = deque(maxlen=maxlen)
        self._step = -1
        self._flops = 0
        self._bytes = 0
        self._kernel_ns = 0
        self._first_start = 0
        self._last_end = 0

    def __call__(self, event: Any) -> None:
        kind = event.kind
        if kind == "kernel":
            if event.step != self._step:
                self._start_step(event.step)
            self._flops += event.flops
            self._bytes += event.bytes
            self._kernel_ns += max(event.end - event.start, 0)
            if not self._first_start or event.start < self._first_start:
                self._first_start = event.start
            self._last_end = max(self._last_end, event.end)
        elif kind == "step_begin":
            self._start_step(event.step)
        elif kind == "step_end":
            self._finish(event)
        elif kind == "run_info":  # a new run (or a reset): the old steps do not belong to it
            self.records.clear()
            self._start_step(-1)

    def _start_step(self, step: int) -> None:
        self._step = step
        self._flops = self._bytes = self._kernel_ns = 0
        self._first_start = self._last_end = 0

    def _finish(self, ev: Any) -> None:
        same = ev.step == self._step
        forward = next((end - start for name, start, end in ev.phases if name == "forward"), 0)
        if not forward and same and self._last_end > self._first_start:
            forward = self._last_end - self._first_start
        prefill = sum(n for _, n in ev.prefill)
        self.records.append(StepRecord(
            step=ev.step,
            num_tokens=ev.num_tokens,
            prefill_tokens=prefill,
            decode_tokens=max(ev.num_tokens - prefill, 0) if ev.decode else 0,
            token_budget=ev.token_budget,
            sampled_tokens=sum(n for _, n in ev.sampled),
            duration_ns=max(ev.ts - ev.begin_ts, 0),
            forward_ns=max(forward, 0),
            kernel_ns=self._kernel_ns if same else 0,
            flops=self._flops if same else 0,
            bytes=self._bytes if same else 0,
        ))
        self._start_step(-1)

    def last(self, n: int) -> list[StepRecord]:
        if n <= 0:
            return []
        return list(self.records)[-n:]
