"""The batch timeline panel: requests as rows, scheduler steps as columns, what each request did in each
step (kvscope.inspector.batch_timeline folds it from the events).

A Line-API widget like the block map: only the visible rows are built, each cell three columns wide and
adjacent equal cells merged into one segment. The columns end at the newest step (live) or at the
replay cursor's step, so the picture scrolls with the run; a short run grows from the left. Row 0 is a
step ruler. Glyphs differ as well as colours, so the cells read without colour too:

    ·  waiting      32  prefill chunk of 32 tokens      ━━━  decode      ━━✓  last decode (finished)
    ✕  preempted    ~   waiting again after a preemption                   ✓   finished without work

Click a row to select its request (as in the block map).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from textual.filter import ANSIToTruecolor, LineFilter
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from kvscope.inspector.batch_timeline import (
    ABSENT,
    FINISHED_AT,
    PREEMPTED_AT,
    PREFILL,
    REQUEUED,
    WAITING,
    Lane,
    mark_finished,
    mark_kind,
    mark_tokens,
)
from kvscope.tui.widgets.block_map import owner_colour
from kvscope.tui.widgets.request_selected import RequestSelected

if TYPE_CHECKING:
    from kvscope.inspector.batch_timeline import BatchTimeline

CELL = 3    # columns per step
LABEL = 6   # "#123  " before the cells
RULER_EVERY = 5

_WAIT_STYLE = Style(color="#6a6a6a")
_REQUEUED_STYLE = Style(color="#d95f5f")
_PREEMPT_STYLE = Style(color="#ff6b6b", bold=True)
_FINISH_STYLE = Style(color="#3cc8c8", bold=True)
_DECODE_STYLE = Style(color="#5fbf5f", bold=True)
_PREFILL_STYLE = Style(color="#000000", bgcolor="#f0c24e", bold=True)
_RULER_STYLE = Style(color="#808080")
_BLANK = " " * CELL

LEGEND = ("[#6a6a6a]·[/] waiting [bold #000000 on #f0c24e]32[/] prefill [bold #5fbf5f]━━[/] decode "
          "[bold #ff6b6b]✕[/] preempted [#d95f5f]~[/] requeued [bold #3cc8c8]✓[/] done")


def chunk_label(tokens: int) -> str:
    """A prefill chunk's size in three columns: '32', '512', '2k5', '16k'."""
    if tokens < 1000:
        return f"{tokens:>3}"
    if tokens < 10_000:
        return f"{tokens // 1000}k{tokens % 1000 // 100}"
    return f"{tokens // 1000}k" if tokens < 100_000 else "≫"


def cell(code: int) -> tuple[str, Style | None]:
    """The three columns and style of one cell code (a Lane.cells entry)."""
    kind = mark_kind(code)
    if kind == ABSENT:
        return _BLANK, None
    if kind == WAITING:
        return " · ", _WAIT_STYLE
    if kind == REQUEUED:
        return " ~ ", _REQUEUED_STYLE
    if kind == PREEMPTED_AT:
        return " ✕ ", _PREEMPT_STYLE
    if kind == FINISHED_AT:
        return " ✓ ", _FINISH_STYLE
    if kind == PREFILL:
        return f"{chunk_label(mark_tokens(code)):>{CELL}}", _PREFILL_STYLE
    return ("━━✓" if mark_finished(code) else "━━━"), _DECODE_STYLE  # DECODE


class BatchTimelineView(ScrollView):
    """Shows a BatchTimeline; `show()` takes the fold and the selected request each refresh."""

    DEFAULT_CSS = """
    BatchTimelineView {
        height: 1fr;
        overflow-x: hidden;
    }
    """

    class Selected(RequestSelected):
        """A row was clicked: `request_id` is its request."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.timeline: BatchTimeline | None = None
        self.selected: int | None = None
        self.first = 0          # the step of the first column
        self.columns = 1        # steps shown
        self.last = -1          # the newest step drawn (columns past it stay blank)
        self.lanes: list[Lane] = []
        self._key: tuple = ()

    # -- data ---------------------------------------------------------------------------------
    def show(self, timeline: BatchTimeline, selected: int | None = None) -> None:
        """Lay out the steps that fit, ending at the newest one, and the requests active in them; repaint
        only when something changed (the fold, the selection or the width)."""
        width = self.scrollable_content_region.width
        key = (id(timeline), timeline.version, selected, width)
        if key == self._key:
            return
        self._key = key
        self.timeline, self.selected = timeline, selected
        self.columns = max((width - LABEL) // CELL, 1)
        self.last = timeline.last_step
        self.first = max(timeline.first_step, self.last - self.columns + 1)
        self.lanes = timeline.window(self.first, max(self.last, self.first)) if self.last >= 0 else []
        self.virtual_size = Size(width, len(self.lanes) + 1)
        self.refresh()

    def on_resize(self) -> None:
        if self.timeline is not None:
            self._key = ()
            self.show(self.timeline, self.selected)

    def row_of(self, request_id: int) -> int | None:
        """The content row (1 = first request row) of a request, scrolled to the top."""
        for i, lane in enumerate(self.lanes):
            if lane.request_id == request_id:
                return i + 1
        return None

    # -- rendering ----------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._ruler(width)
        index = y - 1 + int(self.scroll_offset.y)
        if not 0 <= index < len(self.lanes) or self.last < 0:
            return Strip.blank(width)
        lane = self.lanes[index]
        rid = lane.request_id
        chosen = rid == self.selected
        label_style = Style(color=owner_colour(rid), bold=True, reverse=chosen)
        segments = [Segment(f"#{rid:<{LABEL - 2}}"[: LABEL - 1], label_style), Segment(" ")]
        codes = lane.cells(self.first, min(self.first + self.columns - 1, self.last))
        segment = self._segment
        prev, run = codes[0], 0
        for code in codes:  # adjacent equal cells (a run of decodes, of waiting) become one segment
            if code == prev:
                run += 1
                continue
            segments.append(segment(prev, run))
            prev, run = code, 1
        segments.append(segment(prev, run))
        used = LABEL + len(codes) * CELL
        if used < width:
            segments.append(Segment(" " * (width - used)))
        return Strip(segments, max(used, width))

    def _segment(self, code: int, run: int) -> Segment:
        text, style = cell(code)
        return Segment(text * run, style)

    def _ruler(self, width: int) -> Strip:
        chars = [" "] * (self.columns * CELL)
        free = 0
        for j in range(self.columns):
            step = self.first + j
            label = str(step)
            at = j * CELL + 1
            if step % RULER_EVERY == 0 and at >= free and at + len(label) <= len(chars):
                chars[at:at + len(label)] = label
                free = at + len(label) + 1
        text = "step".ljust(LABEL) + "".join(chars)
        return Strip([Segment(text[:width].ljust(width), _RULER_STYLE)], width)

    def get_line_filters(self) -> Sequence[LineFilter]:
        """Every style here is truecolor already (as in the block map): skip the ANSI-to-truecolor pass."""
        return [f for f in super().get_line_filters() if not isinstance(f, ANSIToTruecolor)]

    # -- input --------------------------------------------------------------------------------
    def on_click(self, event) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        index = offset.y - 1 + int(self.scroll_offset.y)
        if 0 <= index < len(self.lanes):
            self.post_message(self.Selected(self, self.lanes[index].request_id))
