"""The roofline plot on a character grid: log-log axes of arithmetic intensity vs FLOP/s, the roof
min(peak, bandwidth x intensity), vertical guides and point markers. The one plot of the project: `kvscope
roofline` prints it as plain text (roofline_plot), the TUI's roofline panel styles the same grid.

A RooflineGrid draws into a window (LogAxes) its caller chooses, with the caller's glyphs: the command line
fits the window to its points, in ASCII, each point labelled in a legend; the TUI keeps a fixed window under
the device's peak and draws box-drawing glyphs. Pure text (no curses, no colour codes), so it prints the
same in a pipe or a test.
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


@dataclass(frozen=True, slots=True)
class LogAxes:
    """The plot's window: log10 of intensity from x_lo to x_hi across `width` columns, log10 of FLOP/s from
    y_lo (the bottom row) to y_hi (the top row) over `height` rows."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    width: int
    height: int

    def col(self, intensity: float) -> int:
        """The column of an intensity (> 0), clamped to the grid."""
        x = (math.log10(intensity) - self.x_lo) / (self.x_hi - self.x_lo)
        return min(max(int(x * (self.width - 1) + 0.5), 0), self.width - 1)

    def row(self, flops_per_s: float) -> int | None:
        """The row of a FLOP/s value, clamped at the top; None for one under the bottom (or not positive)."""
        if flops_per_s <= 0:
            return None
        y = (math.log10(flops_per_s) - self.y_lo) / (self.y_hi - self.y_lo)
        if y < 0:
            return None
        return min(max(self.height - 1 - int(y * (self.height - 1) + 0.5), 0), self.height - 1)

    def intensity_at(self, col: int) -> float:
        return 10 ** (self.x_lo + (self.x_hi - self.x_lo) * col / (self.width - 1))


class RooflineGrid:
    """The roof on a LogAxes grid (`flat` right of the ridge, `slope` left of it), then what is drawn on it:
    guides (vertical lines in empty cells) and points. `cells[row][col]` is one character; " " is empty."""

    def __init__(self, axes: LogAxes, peak_flops: float, bandwidth: float, *, flat: str = "-",
                 slope: str = "/") -> None:
        self.axes = axes
        self.cells = [[" "] * axes.width for _ in range(axes.height)]
        self._taken: set[tuple[int, int]] = set()  # cells holding a point drawn `beside`
        ridge = peak_flops / bandwidth if bandwidth else 0.0
        for c in range(axes.width):
            intensity = axes.intensity_at(c)
            r = axes.row(min(peak_flops, intensity * bandwidth))
            if r is not None:
                self.cells[r][c] = flat if intensity >= ridge else slope

    def guide(self, intensity: float, glyph: str, top: int = 0) -> None:
        """A vertical line at `intensity` from row `top` down, in the cells still empty."""
        c = self.axes.col(intensity)
        for r in range(max(top, 0), self.axes.height):
            if self.cells[r][c] == " ":
                self.cells[r][c] = glyph

    def point(self, intensity: float, flops_per_s: float, glyph: str, *, beside: bool = False) -> None:
        """A point, drawn over what is there; `beside`: in the nearest cell of its row that no earlier point
        holds (labelled points at one spot sit side by side). Off the grid's bottom or not positive: not drawn."""
        r = self.axes.row(flops_per_s)
        if r is None or intensity <= 0:
            return
        c = self.axes.col(intensity)
        if beside:
            r, c = self._free_cell(r, c)
            self._taken.add((r, c))
        self.cells[r][c] = glyph

    def _free_cell(self, r: int, c: int) -> tuple[int, int]:
        width = self.axes.width
        for step in range(width):
            for cc in (c + step, c - step):
                if 0 <= cc < width and (r, cc) not in self._taken:
                    return r, cc
        return r, c

    @staticmethod
    def row_prefix(label: str, label_width: int, bar: str) -> str:
        """What goes left of a row: its y label right-aligned in `label_width`, a space and the axis bar."""
        return f"{label:>{label_width}} {bar}"

    def x_axis(self, label_width: int, corner: str, rule: str) -> str:
        """The line under the grid: the corner under the axis bar, then the rule across every column."""
        return " " * (label_width + 1) + corner + rule * self.axes.width

    @staticmethod
    def x_labels(label_width: int, labels: Sequence[tuple[int, str]]) -> str:
        """The labels under the x axis, each at its offset from the first column (later ones over earlier)."""
        end = max((at + len(text) for at, text in labels), default=0)
        line = [" "] * end
        for at, text in labels:
            line[at:at + len(text)] = text
        return " " * (label_width + 2) + "".join(line)


def _span(values: Sequence[float], pad: float = 0.3) -> tuple[float, float]:
    logs = [math.log10(v) for v in values if v > 0]
    lo, hi = min(logs), max(logs)
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    return math.floor(lo - pad), math.ceil(hi + pad)


Y_LABEL_WIDTH = 14


def roofline_plot(points: Sequence[PlotPoint], peak_flops: float, bandwidth: float, *,
                  width: int = 64, height: int = 16) -> str:
    """The roof, the ridge (a ':' guide under it) and the points on a width x height grid whose window fits
    them, with axis labels and a legend; ASCII only."""
    ridge = peak_flops / bandwidth
    xs = [p.intensity for p in points if p.intensity > 0] + [ridge]
    x_lo, x_hi = _span(xs)
    ys = [p.flops_per_s for p in points if p.flops_per_s > 0] + [peak_flops, bandwidth * 10 ** x_lo]
    y_lo, _ = _span(ys, pad=0.1)
    y_hi = max(math.log10(max(ys)), math.log10(peak_flops)) + 0.15
    axes = LogAxes(x_lo, x_hi, y_lo, y_hi, width, height)
    grid = RooflineGrid(axes, peak_flops, bandwidth)
    peak_row = axes.row(peak_flops)
    assert peak_row is not None  # the window's rows span peak_flops (one of the ys)
    grid.guide(ridge, ":", top=peak_row + 1)
    for p in points:
        grid.point(p.intensity, p.flops_per_s, p.marker, beside=True)

    lines = []
    for r, cells in enumerate(grid.cells):
        y = 10 ** (y_hi - r / (height - 1) * (y_hi - y_lo))
        shown = peak_flops if r == peak_row else y if r == height - 1 else None
        label = human_count(shown, "FLOP/s", digits=".3g", sep="") if shown is not None else ""
        lines.append(grid.row_prefix(label, Y_LABEL_WIDTH, "|") + "".join(cells).rstrip())
    lines.append(grid.x_axis(Y_LABEL_WIDTH, "+", "-"))
    left, right = f"{10 ** x_lo:g}", f"{10 ** x_hi:g} FLOP/byte"
    mid = f"ridge {ridge:.0f}"
    mid_at = max(len(left) + 1, min(axes.col(ridge) - len(mid) // 2, width - len(right) - len(mid) - 2))
    lines.append(grid.x_labels(Y_LABEL_WIDTH, [(0, left), (mid_at, mid), (width + 12 - len(right), right)]).rstrip())
    legend = "   ".join(f"{p.marker} {p.label}" for p in points)
    lines.append(" " * (Y_LABEL_WIDTH + 2) + legend)
    return "\n".join(lines)
