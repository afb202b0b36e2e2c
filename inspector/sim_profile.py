"""Simulator profiles: the efficiency factors `kvscope calibrate` measures and the simulator applies.

Pure python. A profile says, per operator class (matmul, attention, elementwise), what fraction of the
device's peak compute and of its peak bandwidth an op really reaches, and its fixed cost per call:
measured = calls x op_overhead_s + max(FLOPs / (peak x compute_efficiency), bytes / (bandwidth x
memory_efficiency)), the roofline with two derated roofs; and what a step costs outside the forward
pass (step_overhead_s + per_seq_s x requests + per_token_s x tokens + per_sample_s x sampled rows:
scheduling, batch preparation, sampling). The factors
are relative to the peaks of the device preset named in `relative_to` (kvscope.inspector.devices); the
simulator applies them to whatever GPU it models. IDEAL (every efficiency 1, no overheads) is what the
simulator uses without a profile: the roofline's own times, an upper bound on speed.

    {"kvscope_profile": 1, "measured_on": "...", "relative_to": "cpu",
     "compute_efficiency": {"matmul": 0.04, "attention": 0.02, "elementwise": 0.1},
     "memory_efficiency": {"matmul": 0.2, "attention": 0.1, "elementwise": 0.1},
     "op_overhead_s": {"matmul": 1e-5, ...},
     "step_overhead_s": 2e-4, "per_seq_s": 1e-5, "per_token_s": 1e-6, "per_sample_s": 5e-4}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROFILE_VERSION = 1
OP_CLASSES = ("matmul", "attention", "elementwise")
OP_CLASS: dict[str, str] = {
    "embed": "elementwise", "attn_norm": "elementwise", "qkv": "matmul", "rope": "elementwise",
    "kv_write": "elementwise", "attention": "attention", "o_proj": "matmul", "mlp_norm": "elementwise",
    "mlp": "matmul", "final_norm": "elementwise", "lm_head": "matmul",
}
STEP_TERMS = ("step_overhead_s", "per_seq_s", "per_token_s", "per_sample_s")


class ProfileError(ValueError):
    """A profile file that is not one (one line, naming the file and what is wrong)."""


@dataclass(frozen=True, slots=True)
class SimProfile:
    compute_efficiency: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 1.0))
    memory_efficiency: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 1.0))
    op_overhead_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 0.0))
    step_overhead_s: float = 0.0
    per_seq_s: float = 0.0
    per_token_s: float = 0.0
    per_sample_s: float = 0.0
    relative_to: str = ""
    measured_on: str = "ideal: the roofline at the datasheet peaks (no profile)"
    fit: dict[str, Any] = field(default_factory=dict)  # diagnostics of the calibration (not used to simulate)

    def to_dict(self) -> dict[str, Any]:
        d = {"kvscope_profile": PROFILE_VERSION}
        d.update(asdict(self))
        return d


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
    terms = {t: _number(data.get(t, 0.0), f"{where}: {t}", 0.0) for t in STEP_TERMS}
    fit = data.get("fit", {})
    return SimProfile(compute, memory, overhead, relative_to=str(data.get("relative_to", "")),
                      measured_on=str(data.get("measured_on", where)), fit=fit if isinstance(fit, dict) else {},
                      **terms)


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
