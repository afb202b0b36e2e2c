"""Calibration: fit a simulator profile (kvscope.costmodel.sim_profile) to a real engine's events.

Pure python, events in, a profile out. Two runs of the same workload, all requests arriving at once, so
both schedule the same batches step by step (the scheduler does not read the clock):

1. kernel events on: every op's measured time, FLOPs and bytes. Per operator class, the roofline with
   two derated roofs and a fixed cost per call, measured = c0 + max(FLOPs x a, bytes x b), is fitted by
   alternating least squares of the relative error (fit_roofs): each op is assigned to the roof that binds
   it under the current fit, then (c0, a, b) are refitted, until the assignment settles. The attention
   gets a cost per request too (c0 + c1 x requests + ...): kernels walk the batch request by request or
   in groups (this CPU's pads decodes into context-length groups and runs prefills one by one).
   Against the reference device's peaks, compute_efficiency = 1 / (a x peak FLOP/s) and
   memory_efficiency = 1 / (b x peak bandwidth).
2. kernel events off (the op timer costs time, and the ops leave glue between them): the forward
   phases' measured time against the fitted ops' prediction gives one correction factor for every
   class; the rest of each step (scheduling, batch preparation, sampling: step time - forward time) is
   fitted as step_overhead_s + per_seq_s x requests + per_token_s x tokens + per_sample_s x sampled.

With per-shape timings of every matmul op (measured apart, over a ladder of row counts: `kvscope
calibrate` does it), those predict the matmuls of step 2 instead of the matmul fit, and the profile keeps
them, scaled by the same correction factor; the matmul fit stays for other shapes and devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kvscope.costmodel.devices import Device
from kvscope.costmodel.sim_profile import (
    MATMUL_OPS,
    OP_CLASS,
    OP_CLASSES,
    OpTiming,
    SimProfile,
    fit_least_squares,
)
from kvscope.events.vocabulary import Kind, Phase


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


class RoofFit(NamedTuple):
    """measured ~ fixed + per_seq x requests + max(FLOPs x per_flop, bytes x per_byte), in seconds."""

    fixed: float
    per_flop: float
    per_byte: float
    per_seq: float = 0.0


def fit_roofs(ops: list[tuple[int, int, float]], seqs: list[int] | None = None, rounds: int = 30) -> RoofFit:
    """The RoofFit (every term >= 0) of `ops` (FLOPs, bytes, measured s), with a per-request term where `seqs`
    gives each op's requests, by alternating least squares of the relative error: each op is assigned to the
    roof that binds it under the current fit, the terms refitted, until the assignment settles. Relative, so
    that the many small ops of decode steps count as much as the few big ones of prefills."""
    if not ops:
        return RoofFit(0.0, 0.0, 0.0)
    t_sum = sum(t for _, _, t in ops)
    a = t_sum / max(sum(f for f, _, _ in ops), 1)
    b = t_sum / max(sum(n for _, n, _ in ops), 1)
    weights = [1.0 / max(t, 1e-12) for _, _, t in ops]
    fit = RoofFit(0.0, a, b)
    assigned: list[bool] = []
    for _ in range(rounds):
        compute = [f * a >= n * b and f > 0 for f, n, _ in ops]
        if compute == assigned:
            break
        assigned = compute
        rows = [[w, w * f, 0.0] if c else [w, 0.0, w * n] for (f, n, _), c, w in zip(ops, compute, weights)]
        if seqs is not None:
            rows = [row + [w * k] for row, w, k in zip(rows, weights, seqs)]
        c0, a_new, b_new, *per_seq = fit_least_squares(rows, [1.0] * len(ops))
        a = a_new if any(compute) else a  # a roof no op sits under keeps its last slope
        b = b_new if not all(compute) else b
        fit = RoofFit(c0, a, b, per_seq[0] if per_seq else 0.0)
    return fit


def predict(ops: list[tuple[int, int, float]], fit: RoofFit, seqs: int = 0) -> float:
    """The fit's time for `ops`, each run for `seqs` requests."""
    return sum(fit.fixed + fit.per_seq * seqs + max(f * fit.per_flop, n * fit.per_byte) for f, n, _ in ops)


def tabled_matmul_s(s: StepSample, timings: dict[str, OpTiming], num_layers: int) -> float:
    """A step's matmuls by the per-shape timings: the layer ops at its tokens, the LM head at its sampled rows."""
    layer_ops = sum(timings[op].seconds(s.num_tokens) for op in MATMUL_OPS if op != "lm_head")
    return num_layers * layer_ops + timings["lm_head"].seconds(s.num_sampled)


def fit_profile(timed: list[StepSample], untimed: list[StepSample], reference: Device, dtype: str, *,
                relative_to: str, measured_on: str, op_timings: tuple[OpTiming, ...] = (),
                num_layers: int = 0) -> SimProfile:
    """The profile of the module docstring from the kernel-timed run and the untimed run of one workload
    (`op_timings`: per-shape timings of the measured model's matmuls, which has `num_layers` layers)."""
    fits = {c: fit_roofs([op for s in timed for op in s.ops[c]],
                         [s.num_seqs for s in timed for _ in s.ops[c]] if c == "attention" else None)
            for c in OP_CLASSES}
    tables = {t.op: t for t in op_timings}
    tabled = set(tables) == set(MATMUL_OPS) and num_layers > 0
    fitted = [c for c in OP_CLASSES if not (tabled and c == "matmul")]
    predicted = sum(predict(s.ops[c], fits[c], s.num_seqs) for s in timed for c in fitted)
    if tabled:
        predicted += sum(tabled_matmul_s(s, tables, num_layers) for s in timed)
    forward = sum(s.forward_s for s in untimed)
    scale = forward / predicted if predicted > 0 and len(untimed) == len(timed) else 1.0
    peak, bandwidth = reference.peak_flops(dtype), reference.bandwidth
    compute = {c: 1.0 / (f.per_flop * scale * peak) if f.per_flop > 0 else 1e9 for c, f in fits.items()}
    memory = {c: 1.0 / (f.per_byte * scale * bandwidth) if f.per_byte > 0 else 1e9 for c, f in fits.items()}
    overhead = {c: f.fixed * scale for c, f in fits.items()}
    rows = [[1.0, s.num_seqs, s.num_tokens, s.num_sampled] for s in untimed]
    host = [max(s.step_s - s.forward_s, 0.0) for s in untimed]
    base, per_seq, per_token, per_sample = fit_least_squares(rows, host)
    measured = {c: sum(t for s in timed for _, _, t in s.ops[c]) for c in OP_CLASSES}
    fit = {"steps_timed": len(timed), "steps_untimed": len(untimed), "forward_scale": scale,
           "measured_op_s": measured, "untimed_forward_s": forward, "untimed_host_s": sum(host)}
    if tabled:  # the timed run's matmul events against the tables: how well the measurement apart matches
        fit["tabled_matmul_s"] = sum(tabled_matmul_s(s, tables, num_layers) for s in timed)
    scaled = tuple(OpTiming(t.op, t.in_features, t.out_features, t.dtype, t.rows,
                            tuple(x * scale for x in t.times)) for t in op_timings)
    return SimProfile(compute, memory, overhead, base, per_seq, per_token, per_sample, relative_to=relative_to,
                      attention_per_seq_s=fits["attention"].per_seq * scale, measured_on=measured_on, fit=fit,
                      op_timings=scaled)
