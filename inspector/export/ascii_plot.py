"""A terminal roofline plot: log-log axes of arithmetic intensity vs FLOP/s, the roof, and labelled points.

Pure text (no curses, no colour codes), so it prints the same in a pipe or a
test. The roof is min(peak, bandwidth x intensity); each point is drawn with
its one-character marker and listed in a legend under the plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kvscope.inspector.human_units import human_count


@dataclass(frozen=True, slots=True)
class PlotPoint:
    label: str
    intensity: float  # FLOP per byte
    flops_per_s: float
    marker: str


def _span(values: Sequence[float], pad: float = 0.3) -> tuple[float, float]:
    logs = [math.log10(v) for v in values if v > 0]
    lo, hi = min(logs), max(logs)
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    return math.floor(lo - pad), math.ceil(hi + pad)


def _free_cell(taken: set[tuple[int, int]], r: int, c: int, width: int) -> tuple[int, int]:
    """The cell nearest (r, c) on the same row that no other point holds (points at one spot sit side by side)."""
    for step in range(width):
        for cc in (c + step, c - step):
            if 0 <= cc < width and (r, cc) not in taken:
                return r, cc
    return r, c


def roofline_plot(points: Sequence[PlotPoint], peak_flops: float, bandwidth: float, *,
                  width: int = 64, height: int = 16) -> str:
    """The roof and the points on a width x height character grid, with axis labels and a legend."""
    ridge = peak_flops / bandwidth
    xs = [p.intensity for p in points if p.intensity > 0] + [ridge]
    x_lo, x_hi = _span(xs)
    ys = [p.flops_per_s for p in points if p.flops_per_s > 0] + [peak_flops, bandwidth * 10 ** x_lo]
    y_lo, _ = _span(ys, pad=0.1)
    y_hi = max(math.log10(max(ys)), math.log10(peak_flops)) + 0.15
    grid = [[" "] * width for _ in range(height)]

    def col(x: float) -> int:
        return min(width - 1, max(0, round((math.log10(x) - x_lo) / (x_hi - x_lo) * (width - 1))))

    def row(y: float) -> int:
        return min(height - 1, max(0, round((y_hi - math.log10(y)) / (y_hi - y_lo) * (height - 1))))

    for c in range(width):
        x = 10 ** (x_lo + c / (width - 1) * (x_hi - x_lo))
        roof = min(peak_flops, bandwidth * x)
        r = row(roof)
        if roof >= 10 ** y_lo:
            grid[r][c] = "-" if roof >= peak_flops else "/"
    ridge_c = col(ridge)
    for r in range(row(peak_flops) + 1, height):
        if grid[r][ridge_c] == " ":
            grid[r][ridge_c] = ":"
    taken: set[tuple[int, int]] = set()
    for p in points:
        if p.intensity > 0 and p.flops_per_s > 0:
            r, c = _free_cell(taken, row(p.flops_per_s), col(p.intensity), width)
            grid[r][c] = p.marker
            taken.add((r, c))

    y_label_w = 8
    lines = []
    for r in range(height):
        y = 10 ** (y_hi - r / (height - 1) * (y_hi - y_lo))
        shown = peak_flops if r == row(peak_flops) else y if r == height - 1 else None
        label = human_count(shown, "FLOP/s", digits=".3g", sep="") if shown is not None else ""
        lines.append(f"{label:>{y_label_w + 6}} |" + "".join(grid[r]).rstrip())
    lines.append(" " * (y_label_w + 7) + "+" + "-" * width)
    left, right = f"{10 ** x_lo:g}", f"{10 ** x_hi:g} FLOP/byte"
    mid = f"ridge {ridge:.0f}"
    axis = [" "] * (width + 12)
    for i, ch in enumerate(left):
        axis[i] = ch
    start = max(len(left) + 1, min(ridge_c - len(mid) // 2, width - len(right) - len(mid) - 2))
    for i, ch in enumerate(mid):
        axis[start + i] = ch
    for i, ch in enumerate(right):
        axis[width + 12 - len(right) + i] = ch
    lines.append(" " * (y_label_w + 8) + "".join(axis).rstrip())
    legend = "   ".join(f"{p.marker} {p.label}" for p in points)
    lines.append(" " * (y_label_w + 8) + legend)
    return "\n".join(lines)
