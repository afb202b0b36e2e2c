"""Simulator profiles: the efficiency factors `kvscope calibrate` measures and the simulator applies.

Pure python. A profile says, per operator class (matmul, attention, elementwise), what fraction of the
device's peak compute and of its peak bandwidth an op really reaches, and its fixed cost per call:
measured = calls x op_overhead_s + max(FLOPs / (peak x compute_efficiency), bytes / (bandwidth x
memory_efficiency)), the roofline with two derated roofs (the attention adds attention_per_seq_s per
request in the step); and what a step costs outside the forward
pass (step_overhead_s + per_seq_s x requests + per_token_s x tokens + per_sample_s x sampled rows:
scheduling, batch preparation, sampling). The factors
are relative to the peaks of the device preset named in `relative_to` (kvscope.costmodel.devices); the
simulator applies them to whatever GPU it models. IDEAL (every efficiency 1, no overheads) is what the
simulator uses without a profile: the roofline's own times, an upper bound on speed.

A profile may also carry per-shape operator timings (Vidur's approach; `kvscope calibrate` measures
them): for a matmul op of the engine (MATMUL_OPS) with weights of shape (in, out) per GPU, in a dtype, the
seconds of one call against the rows it runs on (the step's tokens; the sampled rows for the LM head),
measured over a ladder of row counts. A device's GEMM paths are not its roofline (on this CPU a decode's
matmuls take half as long for one request as for three, and less for four than for three), and no
two-roof fit follows that; the simulator reads such a time off the
table by linear interpolation (OpTiming.seconds) wherever it models the measured device, dtype and
shape, and falls back to the efficiency factors elsewhere. The "mlp" shape is (hidden, intermediate):
the SwiGLU's gate/up and down projections together.

    {"kvscope_profile": 1, "measured_on": "...", "relative_to": "cpu",
     "compute_efficiency": {"matmul": 0.04, "attention": 0.02, "elementwise": 0.1},
     "memory_efficiency": {"matmul": 0.2, "attention": 0.1, "elementwise": 0.1},
     "op_overhead_s": {"matmul": 1e-5, ...},
     "step_overhead_s": 2e-4, "per_seq_s": 1e-5, "per_token_s": 1e-6, "per_sample_s": 5e-4,
     "attention_per_seq_s": 5e-5, "op_timings": [{"op": "qkv", "in": 576, "out": 960, "dtype": "fp32",
                     "rows": [1, 2, 3, ...], "seconds": [1.4e-4, 2.1e-4, ...]}, ...]}
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvscope.costmodel.devices import Device, DeviceError, get_device

PROFILE_VERSION = 1
OP_CLASSES = ("matmul", "attention", "elementwise")
OP_CLASS: dict[str, str] = {
    "embed": "elementwise", "attn_norm": "elementwise", "qkv": "matmul", "rope": "elementwise",
    "kv_write": "elementwise", "attention": "attention", "o_proj": "matmul", "mlp_norm": "elementwise",
    "mlp": "matmul", "final_norm": "elementwise", "lm_head": "matmul",
}
STEP_TERMS = ("step_overhead_s", "per_seq_s", "per_token_s", "per_sample_s")
MATMUL_OPS = ("qkv", "o_proj", "mlp", "lm_head")


class ProfileError(ValueError):
    """A profile file that is not one (one line, naming the file and what is wrong)."""


@dataclass(frozen=True, slots=True)
class OpTiming:
    """Measured seconds of one call of matmul `op` with (in, out) weights in `dtype`, at ascending row counts."""

    op: str
    in_features: int
    out_features: int
    dtype: str
    rows: tuple[int, ...]
    times: tuple[float, ...]

    def seconds(self, rows: int) -> float:
        """The time at `rows` rows: linear between the measured row counts, along the last two points'
        slope beyond the last, through the origin below the first (0 rows: no call)."""
        xs, ys = self.rows, self.times
        if rows <= 0:
            return 0.0
        i = bisect.bisect_left(xs, rows)
        if i < len(xs) and xs[i] == rows:
            return ys[i]
        if i == 0:
            return ys[0] * rows / xs[0]
        if i == len(xs):
            i -= 1  # extrapolate along the last segment (a single point: proportionally)
            if i == 0:
                return ys[0] * rows / xs[0]
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(y0 + (y1 - y0) * (rows - x0) / (x1 - x0), 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "in": self.in_features, "out": self.out_features, "dtype": self.dtype,
                "rows": list(self.rows), "seconds": list(self.times)}


@dataclass(frozen=True, slots=True)
class SimProfile:
    compute_efficiency: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 1.0))
    memory_efficiency: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 1.0))
    op_overhead_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 0.0))
    step_overhead_s: float = 0.0
    per_seq_s: float = 0.0
    per_token_s: float = 0.0
    per_sample_s: float = 0.0
    attention_per_seq_s: float = 0.0  # per layer and request with tokens in the step
    relative_to: str = ""
    measured_on: str = "ideal: the roofline at the datasheet peaks (no profile)"
    fit: dict[str, Any] = field(default_factory=dict)  # diagnostics of the calibration (not used to simulate)
    op_timings: tuple[OpTiming, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kvscope_profile": PROFILE_VERSION}
        d.update(asdict(self))
        d["op_timings"] = [t.to_dict() for t in self.op_timings]
        return d

    def timings_on(self, device: Device, dtype: str) -> dict[tuple[str, int, int], OpTiming]:
        """The op timings that describe `device` in `dtype` (canonical name), by (op, in, out); none for any
        other device than the one measured (relative_to): measured seconds belong to it alone."""
        if not self.op_timings:
            return {}
        try:
            if get_device(self.relative_to).name != device.name:
                return {}
        except DeviceError:
            return {}
        return {(t.op, t.in_features, t.out_features): t for t in self.op_timings if t.dtype == dtype}


IDEAL = SimProfile()


def _number(value: Any, where: str, lo: float, lo_open: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < lo or (lo_open and value == lo):
        rel = ">" if lo_open else ">="
        raise ProfileError(f"{where}: must be a finite number {rel} {lo:g}, got {value!r}")
    return float(value)


def profile_from_dict(data: Any, where: str) -> SimProfile:
    """Validate a profile document; ProfileError naming `where` and the field."""
    if not isinstance(data, dict) or data.get("kvscope_profile") != PROFILE_VERSION:
        raise ProfileError(f"{where}: not a kvscope profile (expected a JSON object with "
                           f"\"kvscope_profile\": {PROFILE_VERSION}; write one with `kvscope calibrate -o`)")
    tables = {}
    for key in ("compute_efficiency", "memory_efficiency", "op_overhead_s"):
        table = data.get(key, {} if key == "op_overhead_s" else None)
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: {key} must be an object keyed by {', '.join(OP_CLASSES)}")
        tables[key] = table
    compute, memory = (
        {c: _number(tables[key].get(c), f"{where}: {key}.{c}", 0.0, lo_open=True) for c in OP_CLASSES}
        for key in ("compute_efficiency", "memory_efficiency"))
    over_raw = tables["op_overhead_s"]
    overhead = {c: _number(over_raw.get(c, 0.0), f"{where}: op_overhead_s.{c}", 0.0) for c in OP_CLASSES}
    terms = {t: _number(data.get(t, 0.0), f"{where}: {t}", 0.0) for t in STEP_TERMS + ("attention_per_seq_s",)}
    fit = data.get("fit", {})
    return SimProfile(compute, memory, overhead, relative_to=str(data.get("relative_to", "")),
                      measured_on=str(data.get("measured_on", where)), fit=fit if isinstance(fit, dict) else {},
                      op_timings=_op_timings(data.get("op_timings", []), f"{where}: op_timings"), **terms)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProfileError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _op_timings(data: Any, where: str) -> tuple[OpTiming, ...]:
    if not isinstance(data, list):
        raise ProfileError(f"{where}: must be a list of per-shape timings")
    out = []
    for i, entry in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ProfileError(f"{at}: must be an object with op, in, out, dtype, rows, seconds")
        op = entry.get("op")
        if op not in MATMUL_OPS:
            raise ProfileError(f"{at}.op: must be one of {', '.join(MATMUL_OPS)}, got {op!r}")
        rows, secs = entry.get("rows"), entry.get("seconds")
        if not isinstance(rows, list) or not isinstance(secs, list) or not rows or len(rows) != len(secs):
            raise ProfileError(f"{at}: rows and seconds must be non-empty lists of the same length")
        xs = tuple(_positive_int(r, f"{at}.rows[{j}]") for j, r in enumerate(rows))
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise ProfileError(f"{at}.rows: must be strictly ascending, got {rows}")
        ys = tuple(_number(t, f"{at}.seconds[{j}]", 0.0) for j, t in enumerate(secs))
        dtype = entry.get("dtype")
        if not isinstance(dtype, str) or not dtype:
            raise ProfileError(f"{at}.dtype: must be a dtype name such as fp32 or bf16, got {dtype!r}")
        out.append(OpTiming(op, _positive_int(entry.get("in"), f"{at}.in"),
                            _positive_int(entry.get("out"), f"{at}.out"), dtype, xs, ys))
    return tuple(out)


def load_profile(path: str | Path) -> SimProfile:
    """Read and validate a profile file (ProfileError on any problem)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{p}: no such profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProfileError(f"{p}: not a kvscope profile (not JSON: {exc})") from None
    return profile_from_dict(data, str(p))


def fit_least_squares(rows: Sequence[Sequence[float]], targets: Sequence[float]) -> list[float]:
    """Non-negative coefficients c minimising sum (rows[i] . c - targets[i])^2 (normal equations by Gaussian
    elimination; a column that comes out negative is dropped and the rest refitted)."""
    n = len(rows[0]) if rows else 0
    active = list(range(n))
    while active:
        m = len(active)
        a = [[sum(r[i] * r[j] for r in rows) for j in active] + [sum(r[i] * t for r, t in zip(rows, targets))]
             for i in active]
        for k in range(m):  # ridge-free elimination with partial pivoting
            piv = max(range(k, m), key=lambda i: abs(a[i][k]))
            a[k], a[piv] = a[piv], a[k]
            if abs(a[k][k]) < 1e-300:
                a[k][k] = 1e-300
            for i in range(k + 1, m):
                f = a[i][k] / a[k][k]
                for j in range(k, m + 1):
                    a[i][j] -= f * a[k][j]
        sol = [0.0] * m
        for k in range(m - 1, -1, -1):
            sol[k] = (a[k][m] - sum(a[k][j] * sol[j] for j in range(k + 1, m))) / a[k][k]
        worst = min(range(m), key=lambda k: sol[k])
        if sol[worst] >= 0:
            out = [0.0] * n
            for k, i in enumerate(active):
                out[i] = sol[k]
            return out
        active.pop(worst)
    return [0.0] * n
