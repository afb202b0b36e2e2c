"""Calibration: fit a simulator profile (kvscope.inspector.sim_profile) to a real engine's events.

Pure python, events in, a profile out. Two runs of the same workload, all requests arriving at once, so
both schedule the same batches step by step (the scheduler does not read the clock):

1. kernel events on: every op's measured time, FLOPs and bytes. Per operator class, the roofline with
   two derated roofs and a fixed cost per call, measured = c0 + max(FLOPs x a, bytes x b), is fitted by
   alternating least squares: each op is assigned to the roof that binds it under the current fit, then
   (c0, a, b) are refitted, until the assignment settles. Against the reference device's peaks,
   compute_efficiency = 1 / (a x peak FLOP/s) and memory_efficiency = 1 / (b x peak bandwidth).
2. kernel events off (the op timer costs time, and the ops leave glue between them): the forward
   phases' measured time against the fitted ops' prediction gives one correction factor for every
   class; the rest of each step (scheduling, batch preparation, sampling: step time - forward time) is
   fitted as step_overhead_s + per_seq_s x requests + per_token_s x tokens + per_sample_s x sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvscope.inspector.devices import Device
from kvscope.inspector.events import Kind, Phase
from kvscope.inspector.sim_profile import OP_CLASS, OP_CLASSES, SimProfile, fit_least_squares


@dataclass(slots=True)
class StepSample:
    """One measured step: its time, its forward phase's, its batch, and per op class each op's
    (FLOPs, bytes, measured s)."""

    step_s: float = 0.0
    forward_s: float = 0.0
    num_seqs: int = 0
    num_tokens: int = 0
    num_sampled: int = 0
    ops: dict[str, list[tuple[int, int, float]]] = field(default_factory=lambda: {c: [] for c in OP_CLASSES})


class StepRecorder:
    """A bus subscriber that keeps a StepSample per step (kernel events, when on, fill `ops`)."""

    def __init__(self) -> None:
        self.steps: dict[int, StepSample] = {}

    def __call__(self, event: Any) -> None:
        kind = event.kind
        if kind == Kind.KERNEL:
            cls = OP_CLASS.get(event.op)
            if cls is not None:  # else the sampler: part of the step's host overhead
                self.steps.setdefault(event.step, StepSample()).ops[cls].append(
                    (event.flops, event.bytes, (event.end - event.start) / 1e9))
        elif kind == Kind.STEP_END:
            s = self.steps.setdefault(event.step, StepSample())
            s.step_s = (event.ts - event.begin_ts) / 1e9
            s.forward_s = sum(end - start for name, start, end in event.phases if name == Phase.FORWARD) / 1e9
            s.num_seqs = len(event.prefill) + len(event.decode)
            s.num_tokens = event.num_tokens + event.padding_tokens
            s.num_sampled = len(event.sampled)

    def samples(self) -> list[StepSample]:
        return [self.steps[k] for k in sorted(self.steps) if self.steps[k].step_s > 0]


def fit_roofs(ops: list[tuple[int, int, float]], rounds: int = 30) -> tuple[float, float, float]:
    """(c0, a, b) >= 0 with measured ~ c0 + max(flops x a, bytes x b), by alternating least squares."""
    if not ops:
        return 0.0, 0.0, 0.0
    t_sum = sum(t for _, _, t in ops)
    a = t_sum / max(sum(f for f, _, _ in ops), 1)
    b = t_sum / max(sum(n for _, n, _ in ops), 1)
    targets = [t for _, _, t in ops]
    c0 = 0.0
    assigned: list[bool] = []
    for _ in range(rounds):
        compute = [f * a >= n * b and f > 0 for f, n, _ in ops]
        if compute == assigned:
            break
        assigned = compute
        rows = [[1.0, float(f), 0.0] if c else [1.0, 0.0, float(n)] for (f, n, _), c in zip(ops, compute)]
        c0, a_new, b_new = fit_least_squares(rows, targets)
        a = a_new if any(compute) else a  # a roof no op sits under keeps its last slope
        b = b_new if not all(compute) else b
    return c0, a, b


def predict(ops: list[tuple[int, int, float]], c0: float, a: float, b: float) -> float:
    return sum(c0 + max(f * a, n * b) for f, n, _ in ops)


def fit_profile(timed: list[StepSample], untimed: list[StepSample], reference: Device, dtype: str, *,
                relative_to: str, measured_on: str) -> SimProfile:
    """The profile of the module docstring from the kernel-timed run and the untimed run of one workload."""
    fits = {c: fit_roofs([op for s in timed for op in s.ops[c]]) for c in OP_CLASSES}
    predicted = sum(predict(s.ops[c], *fits[c]) for s in timed for c in OP_CLASSES)
    forward = sum(s.forward_s for s in untimed)
    scale = forward / predicted if predicted > 0 and len(untimed) == len(timed) else 1.0
    peak, bandwidth = reference.peak_flops(dtype), reference.bandwidth
    compute = {c: 1.0 / (a * scale * peak) if a > 0 else 1e9 for c, (_, a, _) in fits.items()}
    memory = {c: 1.0 / (b * scale * bandwidth) if b > 0 else 1e9 for c, (_, _, b) in fits.items()}
    overhead = {c: c0 * scale for c, (c0, _, _) in fits.items()}
    rows = [[1.0, s.num_seqs, s.num_tokens, s.num_sampled] for s in untimed]
    host = [max(s.step_s - s.forward_s, 0.0) for s in untimed]
    base, per_seq, per_token, per_sample = fit_least_squares(rows, host)
    measured = {c: sum(t for s in timed for _, _, t in s.ops[c]) for c in OP_CLASSES}
    fit = {"steps_timed": len(timed), "steps_untimed": len(untimed), "forward_scale": scale,
           "measured_op_s": measured, "untimed_forward_s": forward, "untimed_host_s": sum(host)}
    return SimProfile(compute, memory, overhead, base, per_seq, per_token, per_sample, relative_to=relative_to,
                      measured_on=measured_on, fit=fit)
