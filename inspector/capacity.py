"""Capacity search: the highest request rate a configuration serves within its latency SLOs (Vidur-Search's
question), by doubling then bisecting the Poisson arrival rate. Pure python: the caller runs a workload at
a rate and hands back its metrics (kvscope.cli.commands.capacity does, on a simulated device).

An SLO reads METRIC_pNN:MS, e.g. `ttft_p90:2000` (90% of first tokens within 2 s) or `tbt_p99:200` (99% of
inter-token gaps within 200 ms); metrics: ttft, tbt (= itl), e2e. A rate meets the SLOs when every request
finished and every SLO holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvscope.inspector.metrics import RunSummary, percentile

METRICS = {"ttft": "ttft", "tbt": "itl", "itl": "itl", "e2e": "e2e"}
_SLO = re.compile(r"^(?P<metric>[a-z0-9]+)_p(?P<pct>\d+(\.\d+)?):(?P<limit>\d+(\.\d+)?)$")


class SloError(ValueError):
    """An SLO that does not parse (the message names it and the expected form)."""


@dataclass(frozen=True, slots=True)
class Slo:
    metric: str        # ttft, tbt, itl or e2e as written
    percentile: float  # 0 < p <= 100
    limit_ms: float

    @property
    def label(self) -> str:
        return f"{self.metric}_p{self.percentile:g}"

    def value(self, latencies_ms: dict[str, list[float]]) -> float:
        """This SLO's percentile of the run's latencies (0 when there are none)."""
        return percentile(sorted(latencies_ms[METRICS[self.metric]]), self.percentile)


def parse_slo(text: str) -> Slo:
    m = _SLO.match(text.strip().lower())
    if m is None or m["metric"] not in METRICS:
        raise SloError(f"--slo {text!r}: expected METRIC_pNN:MS with METRIC one of ttft, tbt, itl, e2e "
                       f"(e.g. ttft_p90:2000)")
    pct, limit = float(m["pct"]), float(m["limit"])
    if not 0 < pct <= 100 or limit <= 0:
        raise SloError(f"--slo {text!r}: the percentile must be in (0, 100] and the limit positive")
    return Slo(m["metric"], pct, limit)


@dataclass(slots=True)
class Probe:
    """One run at `rate` requests/s: its summary, each SLO's value, and whether it met them all."""

    rate: float
    summary: RunSummary
    values: list[float]
    ok: bool


def probe(rate: float, summary: RunSummary, latencies_ms: dict[str, list[float]], slos: list[Slo],
          rejected: int = 0) -> Probe:
    values = [s.value(latencies_ms) for s in slos]
    ok = (not rejected and summary.finished == summary.requests
          and all(v <= s.limit_ms for v, s in zip(values, slos)))
    return Probe(rate, summary, values, ok)


@dataclass(slots=True)
class CapacityResult:
    """A variant's answer: the highest rate that met the SLOs (0 if none did), the run there, every probe."""

    name: str
    overrides: dict[str, Any]
    max_rate: float = 0.0
    best: Probe | None = None
    probes: list[Probe] = field(default_factory=list)

    def binding(self, slos: list[Slo]) -> str:
        """The SLO that failed first above the max rate (what limits this configuration)."""
        above = [p for p in self.probes if not p.ok and p.rate > self.max_rate]
        if not above:
            return "-"
        first = min(above, key=lambda p: p.rate)
        over = [s.label for s, v in zip(slos, first.values) if v > s.limit_ms]
        return ", ".join(over) or "unfinished requests"


def search_max_rate(run: Callable[[float], Probe], *, start: float = 1.0, rel_tol: float = 0.05,
                    max_probes: int = 24) -> tuple[float, Probe | None, list[Probe]]:
    """The highest rate meeting the SLOs to within rel_tol: double (or halve) from `start` until the answer
    changes, then bisect. Returns (max rate, the probe there, every probe in order)."""
    probes: list[Probe] = []

    def at(rate: float) -> Probe:
        p = run(rate)
        probes.append(p)
        return p

    first = at(start)
    lo: Probe | None = first if first.ok else None
    hi: Probe | None = None if first.ok else first
    while len(probes) < max_probes:
        if lo is None:  # nothing passed yet: halve
            assert hi is not None  # the first probe is lo or hi
            p = at(hi.rate / 2)
            lo, hi = (p, hi) if p.ok else (None, p)
            if lo is None and p.rate < start / 1024:
                break
        elif hi is None:  # nothing failed yet: double
            p = at(lo.rate * 2)
            lo, hi = (p, None) if p.ok else (lo, p)
        elif hi.rate / lo.rate - 1 <= rel_tol:
            break
        else:
            p = at((lo.rate + hi.rate) / 2)
            lo, hi = (p, hi) if p.ok else (lo, p)
    return (lo.rate if lo else 0.0), lo, probes
