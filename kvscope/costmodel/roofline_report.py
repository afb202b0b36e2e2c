"""The one-shot roofline analysis: one step's per-operator costs placed against a device's peaks.

Built on kvscope.costmodel.roofline (the same cost model the engine's kernel
events use). Decode: `batch` requests with one new token each at `context`
tokens; prefill: `batch` requests each computing a `context`-token prompt.
An operator's time at the peaks is max(FLOPs / peak FLOP/s, bytes / bandwidth), its bound the
roof it sits under (kvscope.costmodel.roofline_bound); the step's lower bound adds the times up
(no overlap between operators).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.devices import Device
from kvscope.costmodel.kv_estimate import EstimateError, canonical_dtype, dtype_bytes
from kvscope.costmodel.roofline import OpCost, roof_time, step_op_costs
from kvscope.costmodel.roofline_bound import Peaks, classify

PHASES = ("prefill", "decode")


@dataclass(frozen=True, slots=True)
class OpRow:
    op: str
    flops: int
    bytes: int
    intensity: float
    bound: str
    time_s: float


@dataclass(frozen=True, slots=True)
class RooflineReport:
    model: str
    device: str
    phase: str
    batch: int
    context: int
    dtype: str
    kv_dtype: str
    peak_flops: float
    bandwidth: float
    ridge: float
    ops: list[OpRow] = field(default_factory=list)
    total_flops: int = 0
    total_bytes: int = 0
    step_time_s: float = 0.0
    overlapped_time_s: float = 0.0
    tokens_per_step: int = 0
    tokens_per_s: float = 0.0
    overlapped_tokens_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(op: str, cost: OpCost, peaks: Peaks) -> OpRow:
    return OpRow(op=op, flops=cost.flops, bytes=cost.bytes, intensity=cost.intensity,
                 bound=classify(cost.intensity, None, peaks),
                 time_s=roof_time(cost, peaks.flops, peaks.bandwidth))


def analyze_step(shape: ModelConfig, device: Device, *, batch: int, context: int, phase: str,
                 dtype: str = "bf16", kv_dtype: str | None = None) -> RooflineReport:
    """Per-operator FLOPs, bytes, intensity, bound and time for one step on `device`."""
    if phase not in PHASES:
        raise EstimateError(f"--phase must be prefill or decode, got {phase!r}")
    if batch <= 0:
        raise EstimateError(f"--batch must be a positive number of requests, got {batch}")
    if context <= 0:
        raise EstimateError(f"--context must be a positive number of tokens, got {context}")
    w_bytes = dtype_bytes(dtype, "--dtype")
    kv_dtype = kv_dtype or dtype
    kv_b = dtype_bytes(kv_dtype, "--kv-dtype")
    act_bytes = 2 if w_bytes < 4 else 4  # activations stay 16-bit under fp8/int8 weights
    query = [1 if phase == "decode" else context] * batch
    seqs = [context] * batch
    costs = step_op_costs(shape, query, seqs, weight_bytes=w_bytes, act_bytes=act_bytes, kv_bytes=kv_b)
    peak, bandwidth = device.peak_flops(canonical_dtype(dtype)), device.bandwidth
    peaks = Peaks(device.name, peak, bandwidth)
    rows = [_row(op, cost, peaks) for op, cost in costs.items()]
    total_flops = sum(r.flops for r in rows)
    total_bytes = sum(r.bytes for r in rows)
    step_time = sum(r.time_s for r in rows)
    overlapped = max(total_flops / peak, total_bytes / bandwidth)
    tokens = sum(query)
    return RooflineReport(
        model=shape.name, device=device.name, phase=phase, batch=batch, context=context,
        dtype=canonical_dtype(dtype), kv_dtype=canonical_dtype(kv_dtype), peak_flops=peak, bandwidth=bandwidth,
        ridge=peak / bandwidth, ops=rows, total_flops=total_flops, total_bytes=total_bytes, step_time_s=step_time,
        overlapped_time_s=overlapped, tokens_per_step=tokens, tokens_per_s=tokens / step_time if step_time else 0.0,
        overlapped_tokens_per_s=tokens / overlapped if overlapped else 0.0,
    )
