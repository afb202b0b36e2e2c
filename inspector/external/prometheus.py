"""A Prometheus text exposition, parsed once: every sample, sums over label sets, and histograms.

Histogram quantiles are Prometheus's `histogram_quantile`: find the bucket the rank falls in and interpolate
linearly between its bounds (the first bucket's lower bound is 0); a rank in the +Inf bucket answers the
highest finite bound. A quantile is therefore exact to within the width of the bucket it lands in.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts (`bounds` ascending, the last +Inf), their sum and count."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float = 0.0

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def minus(self, before: Histogram | None) -> Histogram:
        """The observations made since `before` (itself when there is no `before`, its buckets differ, or a
        count went down: the server restarted and its counters began again)."""
        if before is None or before.bounds != self.bounds:
            return self
        diff = tuple(a - b for a, b in zip(self.cumulative, before.cumulative))
        if any(d < 0 for d in diff):
            return self
        return Histogram(self.bounds, diff, self.sum - before.sum)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) estimated from the buckets; None without observations."""
        total = self.count
        if total <= 0 or not self.bounds:
            return None
        rank = min(max(q, 0.0), 1.0) * total
        i = min(bisect_left(self.cumulative, rank), len(self.bounds) - 1)
        upper = self.bounds[i]
        if math.isinf(upper):
            finite = [b for b in self.bounds if not math.isinf(b)]
            return finite[-1] if finite else None
        lower = self.bounds[i - 1] if i > 0 else min(0.0, upper)
        below = self.cumulative[i - 1] if i > 0 else 0.0
        inside = self.cumulative[i] - below
        if inside <= 0:
            return upper
        return lower + (upper - lower) * (rank - below) / inside


def histogram_of(values: list[float], bounds: list[float]) -> Histogram:
    """The histogram Prometheus would export for `values` with these upper bounds (+Inf added)."""
    edges = sorted(set(bounds) | {math.inf})
    cumulative = tuple(float(sum(1 for v in values if v <= b)) for b in edges)
    return Histogram(tuple(edges), cumulative, math.fsum(values))


@dataclass
class Exposition:
    """One scrape: `totals` is sample name -> value summed over its label sets (one engine or many)."""

    samples: list[tuple[str, Labels, float]] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)

    def first(self, *names: str) -> tuple[str, float] | None:
        """(name, total) of the first of `names` this scrape has (today's name first, then older ones)."""
        for name in names:
            if name in self.totals:
                return name, self.totals[name]
        return None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """`name`'s samples summed per value of `label` (e.g. finished requests per finished_reason)."""
        out: dict[str, float] = {}
        for n, labels, value in self.samples:
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + value
        return out

    def labels(self, name: str) -> dict[str, str]:
        """The labels of `name`'s first sample (an info gauge's payload), {} without one."""
        return next((dict(labels) for n, labels, _ in self.samples if n == name), {})

    def histogram(self, family: str) -> Histogram | None:
        """Family `family`'s buckets summed over every label set but `le`; None when it is not exported."""
        by_le: dict[float, float] = {}
        for n, labels, value in self.samples:
            if n == family + "_bucket":
                le = dict(labels).get("le")
                if le is not None:
                    bound = float(le)
                    by_le[bound] = by_le.get(bound, 0.0) + value
        if not by_le:
            return None
        bounds = tuple(sorted(by_le))
        return Histogram(bounds, tuple(by_le[b] for b in bounds), self.totals.get(family + "_sum", 0.0))


def parse_exposition(text: str) -> Exposition:
    """Parse a text exposition (prometheus_client's parser); ValueError on a malformed one."""
    out = Exposition()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.samples.append((s.name, tuple(sorted(s.labels.items())), s.value))
            out.totals[s.name] = out.totals.get(s.name, 0.0) + s.value
    return out
