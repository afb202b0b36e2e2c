"""Roofline readout for the last steps: arithmetic intensity (analytic FLOPs / bytes summed over
the step's KernelEvents), achieved FLOP/s and bytes/s over the measured forward time, the
device's peaks, the bound (memory / compute / overhead, kvscope.costmodel.roofline_bound), and a
small log-log roofline plot.
"""

from __future__ import annotations

import math
from functools import partial

from rich.text import Text
from textual.widgets import Static

from kvscope.costmodel.roofline_bound import COMPUTE, MEMORY, NO_DATA, OVERHEAD, Peaks, classify
from kvscope.inspector.human_units import human_count
from kvscope.inspector.step_history import StepHistory, StepRecord
from kvscope.tui.widgets.bars import update_text

RECENT_STEPS = 8
PLOT_WIDTH = 34
PLOT_HEIGHT = 7
AI_RANGE = (-1.0, 3.0)   # log10 FLOP/byte shown on the x axis
DECADES_SHOWN = 4        # y axis spans peak / 10^4 .. peak
BOUND_COLOUR = {MEMORY: "#4e9af1", COMPUTE: "#5fbf5f", OVERHEAD: "#d95f5f", NO_DATA: "dim"}


si = partial(human_count, small=".2f")  # the panel's SI format: two decimals under 1000 too


def _aggregate(records: list[StepRecord]) -> tuple[int, int, int]:
    flops = sum(r.flops for r in records)
    nbytes = sum(r.bytes for r in records)
    ns = sum(r.forward_ns for r in records)
    return flops, nbytes, ns


def roofline_plot(peaks: Peaks, points: list[tuple[float, float]], marker_ai: float | None = None) -> Text:
    """A PLOT_WIDTH x PLOT_HEIGHT log-log chart: the roof, then (intensity, FLOP/s) points, last one bold."""
    lo_x, hi_x = AI_RANGE
    top = math.log10(peaks.flops) if peaks.flops > 0 else 0.0
    bottom = top - DECADES_SHOWN
    grid = [[" "] * PLOT_WIDTH for _ in range(PLOT_HEIGHT)]
    styles: dict[tuple[int, int], str] = {}

    def col_of(ai: float) -> int:
        x = (math.log10(ai) - lo_x) / (hi_x - lo_x)
        return min(max(int(x * (PLOT_WIDTH - 1) + 0.5), 0), PLOT_WIDTH - 1)

    def row_of(flops: float) -> int | None:
        if flops <= 0:
            return None
        y = (math.log10(flops) - bottom) / (top - bottom)
        if y < 0:
            return None
        return min(max(PLOT_HEIGHT - 1 - int(y * (PLOT_HEIGHT - 1) + 0.5), 0), PLOT_HEIGHT - 1)

    for c in range(PLOT_WIDTH):
        ai = 10 ** (lo_x + (hi_x - lo_x) * c / (PLOT_WIDTH - 1))
        r = row_of(min(peaks.flops, ai * peaks.bandwidth))
        if r is not None:
            grid[r][c] = "─" if ai >= peaks.ridge else "╱"
            styles[(r, c)] = "#808080"
    if marker_ai:
        c = col_of(marker_ai)
        for r in range(PLOT_HEIGHT):
            if grid[r][c] == " ":
                grid[r][c] = "┆"
                styles[(r, c)] = "#f0c24e"
    for i, (ai, achieved) in enumerate(points):
        r = row_of(achieved)
        if r is None or ai <= 0:
            continue
        c = col_of(ai)
        last = i == len(points) - 1
        grid[r][c] = "●" if last else "•"
        styles[(r, c)] = "bold #ffd700" if last else "#c79a6b"
    text = Text()
    for r, row in enumerate(grid):
        on_axis = r in (0, PLOT_HEIGHT - 1)
        label = f"{si(10 ** (top - DECADES_SHOWN * r / (PLOT_HEIGHT - 1)), 'F/s'):>11}" if on_axis else " " * 11
        text.append(label + " │", style="dim")
        for c, ch in enumerate(row):
            text.append(ch, style=styles.get((r, c), ""))
        text.append("\n")
    text.append(" " * 12 + "└" + "─" * PLOT_WIDTH + "\n", style="dim")
    text.append(" " * 13 + f"{10 ** lo_x:g}".ljust(PLOT_WIDTH - 10) + f"{10 ** hi_x:g} FLOP/B", style="dim")
    return text


class RooflinePanel(Static):
    def __init__(self, peaks: Peaks, *, frozen: bool = False, id: str | None = None) -> None:
        super().__init__("no step yet", id=id)
        self.peaks = peaks
        self.frozen = frozen
        self.last_bound = NO_DATA

    def update_from(self, history: StepHistory) -> None:
        records = [r for r in history.last(RECENT_STEPS) if r.flops > 0]
        peaks = self.peaks
        text = Text()
        text.append(f"{peaks.name}\n", style="bold")
        text.append(f"peak {si(peaks.flops, 'FLOP/s')} · {si(peaks.bandwidth, 'B/s')}"
                    f" · ridge {peaks.ridge:.0f} FLOP/B\n", style="dim")
        if not records:
            text.append("no step with kernel costs yet\n", style="dim")
            text.append_text(roofline_plot(peaks, []))
            update_text(self, text)
            return
        flops, nbytes, ns = _aggregate(records)
        intensity = flops / nbytes if nbytes else 0.0
        text.append(f"last {len(records)} steps  ", style="bold")
        text.append(f"{si(flops, 'FLOP')} · {si(nbytes, 'B')} · intensity {intensity:.2f} FLOP/B\n")
        if self.frozen:
            text.append("achieved  —  (time hidden in deterministic mode)\n", style="dim")
            text.append_text(roofline_plot(peaks, [], marker_ai=intensity))
            update_text(self, text)
            return
        achieved = flops * 1e9 / ns if ns else 0.0
        bandwidth = nbytes * 1e9 / ns if ns else 0.0
        bound = classify(intensity, achieved, peaks)
        self.last_bound = bound
        text.append("achieved  ")
        text.append(f"{si(achieved, 'FLOP/s')} ({100 * achieved / peaks.flops:.1f}%)", style="bold")
        text.append(" · ")
        text.append(f"{si(bandwidth, 'B/s')} ({100 * bandwidth / peaks.bandwidth:.1f}%)", style="bold")
        text.append("  →  ")
        text.append(f"{bound}-bound\n" if bound != NO_DATA else f"{NO_DATA}\n", style=f"bold {BOUND_COLOUR[bound]}")
        points = [(r.intensity, r.achieved_flops) for r in records]
        text.append_text(roofline_plot(peaks, points))
        update_text(self, text)
