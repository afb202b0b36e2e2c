"""Per-operator timing inside a step, for kernel events and live NVTX ranges.

On CPU each op gets host timestamps. On CUDA each op records a pair of CUDA
events; they are resolved after the step (when the sampler has synchronised
anyway), so the forward pass never waits, and the device times are placed on
the host clock relative to an anchor event recorded when the forward began.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch


class RangeHook(Protocol):
    """Live ranges (e.g. NVTX): push when work starts, pop when it ends."""

    def push(self, name: str, category: str, payload: int = 0) -> None: ...

    def pop(self) -> None: ...


class OpTimer:
    """Collects (op, layer, start_ns, end_ns) for one step; the model calls begin/end around each op."""

    __slots__ = ("cuda", "hook", "records", "_open", "_anchor_event", "_anchor_ns")

    def __init__(self, device: torch.device, hook: RangeHook | None = None) -> None:
        self.cuda = device.type == "cuda"
        self.hook = hook
        self.records: list[tuple[str, int, Any, Any]] = []
        self._open: tuple[str, int, Any] | None = None
        self._anchor_event: Any = None
        self._anchor_ns = 0

    def start_step(self) -> None:
        self.records = []
        if self.cuda:
            self._anchor_event = torch.cuda.Event(enable_timing=True)
            self._anchor_event.record()
            self._anchor_ns = time.perf_counter_ns()

    def begin(self, op: str, layer: int) -> None:
        if self.hook is not None:
            self.hook.push(op, "kernel")
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._open = (op, layer, ev)
        else:
            self._open = (op, layer, time.perf_counter_ns())

    def end(self) -> None:
        op, layer, start = self._open  # type: ignore[misc]
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.records.append((op, layer, start, ev))
        else:
            self.records.append((op, layer, start, time.perf_counter_ns()))
        self._open = None
        if self.hook is not None:
            self.hook.pop()

    def resolve(self) -> list[tuple[str, int, int, int]]:
        """The step's ops as (op, layer, start_ns, end_ns) on the host clock."""
        if not self.cuda:
            return self.records  # type: ignore[return-value]
        if not self.records:
            return []
        self.records[-1][3].synchronize()
        anchor, base = self._anchor_event, self._anchor_ns
        out = []
        for op, layer, s, e in self.records:
            start = base + int(anchor.elapsed_time(s) * 1e6)
            end = base + int(anchor.elapsed_time(e) * 1e6)
            out.append((op, layer, start, end))
        return out
