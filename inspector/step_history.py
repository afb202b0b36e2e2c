"""The per-step history: one StepRecord per finished scheduler step (tokens, queue depths, KV blocks,
time and analytic cost), folded from the event stream, live or replayed. The TUI's latency and
roofline panels draw from it. Pure python.

A step's KernelEvents and KVSnapshot arrive before its StepEnd; the kernels' FLOPs, bytes and
durations are summed, and the snapshot's block counts kept, into the record made at the StepEnd
(a snapshot that comes after its StepEnd still fills the record in).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice

from kvscope.events.records import KernelEvent, KVSnapshot, RunInfo, StepBegin, StepEnd
from kvscope.events.vocabulary import Phase
from kvscope.inspector.event_fold import EventFold

HISTORY_STEPS = 240


@dataclass(slots=True)
class StepRecord:
    """One finished scheduler step."""

    step: int
    ts: int                   # the StepEnd's timestamp
    num_tokens: int
    prefill_tokens: int
    decode_tokens: int
    max_num_batched_tokens: int
    sampled_tokens: int
    num_running: int
    num_waiting: int
    duration_ns: int          # StepBegin to StepEnd
    forward_ns: int           # the forward phase (or the kernels' span when phases are missing)
    kernel_ns: int            # sum of kernel durations
    flops: int
    bytes: int
    used_blocks: int = 0      # from the step's KVSnapshot (0 without one)
    cached_blocks: int = 0
    free_blocks: int = 0

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


class StepHistory(EventFold):
    """A bus subscriber keeping the last `maxlen` StepRecords."""

    def __init__(self, maxlen: int = HISTORY_STEPS) -> None:
        self.records: deque[StepRecord] = deque(maxlen=maxlen)
        self._step = -1
        self._flops = self._bytes = self._kernel_ns = 0
        self._first_start = self._last_end = 0  # ns: the step's first kernel start, its last kernel end
        self._kv: KVSnapshot | None = None
        self._start_step(-1)

    def last(self, n: int) -> list[StepRecord]:
        """The newest `n` records, oldest first."""
        if n <= 0:
            return []
        newest = list(islice(reversed(self.records), n))
        newest.reverse()
        return newest

    # ------------------------------------------------------------------ events
    def on_run_info(self, ev: RunInfo) -> None:  # a new run (or a reset): the old steps do not belong to it
        self.records.clear()
        self._start_step(-1)

    def on_step_begin(self, ev: StepBegin) -> None:
        self._start_step(ev.step)

    def on_kernel(self, ev: KernelEvent) -> None:
        if ev.step != self._step:
            self._start_step(ev.step)
        self._flops += ev.flops
        self._bytes += ev.bytes
        start, end = ev.start, ev.end
        if end > start:
            self._kernel_ns += end - start
        if not self._first_start or start < self._first_start:
            self._first_start = start
        if end > self._last_end:
            self._last_end = end

    def on_kv(self, ev: KVSnapshot) -> None:
        records = self.records
        if records and records[-1].step == ev.step:  # after its StepEnd
            _take_blocks(records[-1], ev)
        else:
            self._kv = ev

    def on_step_end(self, ev: StepEnd) -> None:
        same = ev.step == self._step
        forward = next((end - start for name, start, end in ev.phases if name == Phase.FORWARD), 0)
        if not forward and same and self._last_end > self._first_start:
            forward = self._last_end - self._first_start
        prefill = sum(n for _, n in ev.prefill)
        record = StepRecord(
            step=ev.step,
            ts=ev.ts,
            num_tokens=ev.num_tokens,
            prefill_tokens=prefill,
            decode_tokens=max(ev.num_tokens - prefill, 0) if ev.decode else 0,
            max_num_batched_tokens=ev.max_num_batched_tokens,
            sampled_tokens=sum(n for _, n in ev.sampled),
            num_running=ev.num_running,
            num_waiting=ev.num_waiting,
            duration_ns=max(ev.ts - ev.begin_ts, 0),
            forward_ns=max(forward, 0),
            kernel_ns=self._kernel_ns if same else 0,
            flops=self._flops if same else 0,
            bytes=self._bytes if same else 0,
        )
        kv = self._kv
        if kv is not None and kv.step == ev.step:
            _take_blocks(record, kv)
        self.records.append(record)
        self._start_step(-1)

    def _start_step(self, step: int) -> None:
        self._step = step
        self._flops = self._bytes = self._kernel_ns = 0
        self._first_start = self._last_end = 0
        self._kv = None


def _take_blocks(record: StepRecord, kv: KVSnapshot) -> None:
    record.used_blocks = kv.used_blocks
    record.cached_blocks = kv.cached_blocks
    record.free_blocks = kv.free_blocks
