"""Roofline readout for the last steps: arithmetic intensity (analytic FLOPs / bytes summed over
the step's KernelEvents), achieved FLOP/s and bytes/s over the measured forward time, the
device's peaks, the bound (memory / compute / overhead, kvscope.costmodel.roofline_bound), and a
small log-log roofline plot.
"""

from __future__ import annotations

import math
from functools import partial

from rich.text import Text
from textual.reactive import var
from textual.widgets import Static

from kvscope.costmodel.roofline_bound import COMPUTE, MEMORY, NO_DATA, OVERHEAD, Peaks, classify
from kvscope.inspector.export.ascii_plot import LogAxes, RooflineGrid
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


_GLYPH_STYLE = {"─": "#808080", "╱": "#808080", "┆": "#f0c24e", "●": "bold #ffd700", "•": "#c79a6b"}
LABEL_WIDTH = 11


def roofline_plot(peaks: Peaks, points: list[tuple[float, float]], marker_ai: float | None = None) -> Text:
    """A PLOT_WIDTH x PLOT_HEIGHT log-log chart (kvscope.inspector.export.ascii_plot's grid) in a fixed window
    under the peak: the roof, then (intensity, FLOP/s) points, the last one bold; `marker_ai`: a guide at
    that intensity (deterministic mode, where no point has a time)."""
    lo_x, hi_x = AI_RANGE
    top = math.log10(peaks.flops) if peaks.flops > 0 else 0.0
    grid = RooflineGrid(LogAxes(lo_x, hi_x, top - DECADES_SHOWN, top, PLOT_WIDTH, PLOT_HEIGHT), peaks.flops,
                        peaks.bandwidth, flat="─", slope="╱")
    if marker_ai:
        grid.guide(marker_ai, "┆")
    for i, (ai, achieved) in enumerate(points):
        grid.point(ai, achieved, "●" if i == len(points) - 1 else "•")
    text = Text()
    for r, row in enumerate(grid.cells):
        on_axis = r in (0, PLOT_HEIGHT - 1)
        label = si(10 ** (top - DECADES_SHOWN * r / (PLOT_HEIGHT - 1)), "F/s") if on_axis else ""
        text.append(grid.row_prefix(label, LABEL_WIDTH, "│"), style="dim")
        for ch in row:
            text.append(ch, style=_GLYPH_STYLE.get(ch, ""))
        text.append("\n")
    text.append(grid.x_axis(LABEL_WIDTH, "└", "─") + "\n", style="dim")
    text.append(grid.x_labels(LABEL_WIDTH, [(0, f"{10 ** lo_x:g}"), (PLOT_WIDTH - 10, f"{10 ** hi_x:g} FLOP/B")]),
                style="dim")
    return text


class RooflinePanel(Static):
    """The readout and the plot of the last RECENT_STEPS steps against `peaks`, a reactive: new peaks (the run's
    device became known) redraw the panel from the history it last showed."""

    peaks: var[Peaks] = var(Peaks("", 0.0, 0.0), init=False)  # the constructor's peaks replace it

    def __init__(self, peaks: Peaks, *, frozen: bool = False, id: str | None = None) -> None:
        super().__init__("no step yet", id=id)
        self.set_reactive(RooflinePanel.peaks, peaks)
        self.frozen = frozen
        self.last_bound = NO_DATA
        self._history: StepHistory | None = None

    def watch_peaks(self) -> None:
        if self._history is not None:
            self.update_from(self._history)

    def update_from(self, history: StepHistory) -> None:
        self._history = history
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
