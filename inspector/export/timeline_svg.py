"""Batch timelines as SVG, for the `kvscope bench --chart` page: one panel per variant, side by side,
requests as rows and scheduler steps as columns, every panel on the same scale of steps, so a variant
that needs more steps draws a longer picture. For static vs continuous batching it is the classic figure:
static batches wait for their longest request with seats left empty, continuous batching refills a seat
at the next step.

Each panel is a nested <svg class="timeline" data-variant=... data-steps=...>; each run of equal cells in a
row is one <rect class="cell"> with data-kind, data-request and data-first / data-last steps, so the
picture can be checked without reading geometry. Pure python (kvscope.inspector.batch_timeline's folds).
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

from kvscope.inspector.batch_timeline import (
    ABSENT,
    DECODE,
    FINISHED_AT,
    KIND_NAMES,
    PREEMPTED_AT,
    PREFILL,
    REQUEUED,
    WAITING,
    BatchTimeline,
    mark_kind,
    mark_tokens,
)

COLOURS = {WAITING: "#e4e4e4", PREFILL: "#edc948", DECODE: "#59a14f", PREEMPTED_AT: "#e15759",
           REQUEUED: "#f4b3b3", FINISHED_AT: "#76b7b2"}
LEGEND = ((WAITING, "waiting"), (PREFILL, "prefill chunk"), (DECODE, "decode"), (PREEMPTED_AT, "preempted"),
          (REQUEUED, "waiting after preemption"))

_TITLE_H = 30
_PANEL_TITLE_H = 22
_AXIS_H = 26
_LEGEND_H = 24
_GAP = 20
_MAX_PLOT_H = 320


def timeline_section(timelines: Sequence[tuple[str, BatchTimeline]], x0: float, y0: float, width: float,
                     columns: int = 2) -> tuple[list[str], float]:
    """SVG elements for the timelines under a section title, `columns` panels a row; returns them and the
    height they take."""
    if not timelines:
        return [], 0.0
    spans = [max(t.last_step - t.first_step + 1, 1) for _, t in timelines]
    most_steps = max(spans)
    most_rows = max((len(t.lanes) for _, t in timelines), default=1) or 1
    row_h = max(2.0, min(12.0, _MAX_PLOT_H / most_rows))
    label_w = 34 if row_h >= 9 else 0
    panel_w = (width - _GAP * (columns - 1)) / columns
    per_step = (panel_w - label_w - 6) / most_steps
    panel_h = _PANEL_TITLE_H + most_rows * row_h + _AXIS_H
    out = [f'<text x="{x0}" y="{y0 + 18}" font-size="14" font-weight="bold">batch timeline: requests (rows) x '
           f'scheduler steps (columns), one scale for every variant</text>']
    for i, ((name, timeline), steps) in enumerate(zip(timelines, spans)):
        px = x0 + (i % columns) * (panel_w + _GAP)
        py = y0 + _TITLE_H + (i // columns) * (panel_h + _GAP)
        out += _panel(name, timeline, steps, px, py, panel_w, panel_h, row_h, label_w, per_step)
    rows_of_panels = -(-len(timelines) // columns)
    legend_y = y0 + _TITLE_H + rows_of_panels * (panel_h + _GAP)
    out += _legend(x0, legend_y)
    return out, legend_y + _LEGEND_H - y0


def _panel(name: str, timeline: BatchTimeline, steps: int, x: float, y: float, w: float, h: float, row_h: float,
           label_w: float, per_step: float) -> list[str]:
    first, last = timeline.first_step, timeline.last_step
    out = [f'<svg class="timeline" data-variant="{_attr(name)}" data-steps="{steps}" x="{x:.1f}" y="{y:.1f}" '
           f'width="{w:.1f}" height="{h:.1f}" overflow="visible">',
           f'<text x="0" y="15" font-weight="bold">{escape(name)}: {steps} steps, {len(timeline.lanes)} '
           f'requests</text>']
    top = _PANEL_TITLE_H
    for row, (rid, lane) in enumerate(sorted(timeline.lanes.items())):
        ry = top + row * row_h
        if label_w:
            out.append(f'<text x="{label_w - 4}" y="{ry + row_h - 2:.1f}" font-size="{min(row_h, 10):.0f}" '
                       f'text-anchor="end" fill="#555">#{rid}</text>')
        codes = lane.cells(first, last)
        start = 0
        for j in range(1, len(codes) + 1):
            if j < len(codes) and mark_kind(codes[j]) == mark_kind(codes[start]):
                continue
            kind = mark_kind(codes[start])
            if kind != ABSENT:
                tokens = sum(mark_tokens(c) for c in codes[start:j]) if kind in (PREFILL, DECODE) else 0
                wide = max((j - start) * per_step, 2.0 if kind in (PREFILL, PREEMPTED_AT) else 0.0)  # keep slivers seen
                out.append(f'<rect class="cell" data-kind="{KIND_NAMES[kind]}" data-request="{rid}" '
                           f'data-first="{first + start}" data-last="{first + j - 1}" data-tokens="{tokens}" '
                           f'x="{label_w + start * per_step:.2f}" y="{ry:.2f}" width="{wide:.2f}" '
                           f'height="{max(row_h - 1, 1):.2f}" fill="{COLOURS.get(kind, "#999")}"/>')
            start = j
    axis_y = top + len(timeline.lanes) * row_h + 2
    out.append(f'<line x1="{label_w}" y1="{axis_y:.1f}" x2="{label_w + steps * per_step:.1f}" y2="{axis_y:.1f}" '
               f'stroke="#888"/>')
    for tick in _ticks(steps):
        tx = label_w + tick * per_step
        out.append(f'<line x1="{tx:.1f}" y1="{axis_y:.1f}" x2="{tx:.1f}" y2="{axis_y + 4:.1f}" stroke="#888"/>')
        out.append(f'<text x="{tx:.1f}" y="{axis_y + 15:.1f}" font-size="10" text-anchor="middle" fill="#555">'
                   f'{first + tick}</text>')
    out.append("</svg>")
    return out


def _ticks(steps: int) -> list[int]:
    """Step offsets for axis ticks: a round interval giving about six of them."""
    for every in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if steps / every <= 8:
            break
    return list(range(0, steps + 1, every))


def _legend(x: float, y: float) -> list[str]:
    out = []
    for kind, label in LEGEND:
        out.append(f'<rect x="{x:.1f}" y="{y + 4:.1f}" width="12" height="12" fill="{COLOURS[kind]}"/>')
        out.append(f'<text x="{x + 16:.1f}" y="{y + 14:.1f}">{escape(label)}</text>')
        x += 28 + 6.5 * len(label)
    return out


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})
