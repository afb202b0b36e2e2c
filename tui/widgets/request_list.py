"""The request list of the scheduler panel: one row per request (Line API, only visible rows are
drawn). Up / down move the cursor, enter or a click selects the request under it."""

from __future__ import annotations

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from kvscope.tui.widgets.request_selected import RequestSelected

_CURSOR_STYLE = Style(bgcolor="#303a4a")


class RequestList(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    RequestList {
        height: 1fr;
        overflow-x: hidden;
        overflow-y: scroll;
    }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("enter", "select", "select", show=False),
    ]

    class Selected(RequestSelected):
        """A request row was chosen (enter or a click)."""

    def __init__(self, format_row, *, id: str | None = None) -> None:
        """`format_row(request, selected: bool) -> [(text, style), ...]` draws one row."""
        super().__init__(id=id)
        self._format_row = format_row
        self.rows: list = []
        self.cursor = 0
        self.selected: int | None = None

    def set_rows(self, rows: list, selected: int | None) -> None:
        self.rows = rows
        self.selected = selected
        self.cursor = min(self.cursor, max(len(rows) - 1, 0))
        width = self.scrollable_content_region.width
        if self.virtual_size.width != width:
            self.virtual_size = Size(width, len(rows))
        elif self.virtual_size.height != len(rows):
            self._set_row_count(len(rows))
        self.refresh()

    def _set_row_count(self, count: int) -> None:
        """The row count changes on most steps. Assigning `virtual_size` would lay out the whole screen
        (and repaint every scrollbar on it, a tenth of a frame); the vertical scrollbar is always shown
        (overflow-y: scroll), so nothing else moves: update the size quietly and move the thumb."""
        self.set_reactive(RequestList.virtual_size, Size(self.virtual_size.width, count))
        self.vertical_scrollbar.window_virtual_size = count
        if self.scroll_y > self.max_scroll_y:
            self.scroll_y = self.max_scroll_y

    def render_line(self, y: int) -> Strip:
        index = y + int(self.scroll_offset.y)
        width = self.scrollable_content_region.width
        if index < 0 or index >= len(self.rows):
            return Strip.blank(width)
        req = self.rows[index]
        runs = self._format_row(req, req.request_id == self.selected)
        strip = Strip([Segment(text, Style.parse(style)) for text, style in runs],
                      sum(cell_len(text) for text, _ in runs)).adjust_cell_length(width)
        if index == self.cursor and self.has_focus:
            strip = strip.apply_style(_CURSOR_STYLE)
        return strip

    def action_cursor(self, delta: int) -> None:
        if not self.rows:
            return
        self.cursor = min(max(self.cursor + delta, 0), len(self.rows) - 1)
        self.scroll_to_region_if_needed()
        self.refresh()

    def scroll_to_region_if_needed(self) -> None:
        top = int(self.scroll_offset.y)
        height = self.scrollable_content_region.height
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)

    def action_select(self) -> None:
        if self.rows:
            self.post_message(self.Selected(self, self.rows[self.cursor].request_id))

    def on_click(self, event) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        index = offset.y + int(self.scroll_offset.y)
        if 0 <= index < len(self.rows):
            self.cursor = index
            self.post_message(self.Selected(self, self.rows[index].request_id))
            self.refresh()
