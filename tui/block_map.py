"""The block-table map: one cell per physical KV block, coloured by owning request.

A Line-API widget (ScrollView + render_line): only the visible rows are built, each
row as a few merged segments, so pools of tens of thousands of blocks stay cheap.
Glyphs differ as well as colours, so the states read without colour too:

    █ used (owner colour)   ◆ shared, ref count > 1   ░ cached, free but reusable   · free
    ▣ blocks of the selected request
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

FREE, CACHED, USED, SHARED = 0, 1, 2, 3
STATE_CODES = {"free": FREE, "cached": CACHED, "used": USED, "shared": SHARED}

OWNER_COLOURS = (
    "#4e9af1", "#f08c3a", "#5fbf5f", "#d95f5f", "#a97fd6", "#c79a6b", "#e07cc0", "#9aa3ad",
    "#c8c83c", "#3cc8c8", "#7f8ff0", "#f0c24e",
)
GLYPH = {FREE: "·", CACHED: "░", USED: "█", SHARED: "◆"}
SELECTED_GLYPH = "▣"
_FREE_STYLE = Style(color="#4a4a4a")
_CACHED_STYLE = Style(color="#5f9ea0")
_SELECTED_STYLE = Style(color="#000000", bgcolor="#ffd700", bold=True)
_GUTTER_STYLE = Style(color="#707070")


def owner_colour(request_id: int) -> str:
    return OWNER_COLOURS[request_id % len(OWNER_COLOURS)]


@dataclass(slots=True)
class BlockCells:
    """What the map draws: per physical block a state code (FREE/CACHED/USED/SHARED) and an owner id (-1 none)."""

    states: list[int]
    owners: list[int]

    @classmethod
    def empty(cls) -> "BlockCells":
        return cls([], [])


def cells_from_view(view) -> BlockCells:
    """Read the per-block state and owner out of an EngineView (kvscope.inspector.state)."""
    refs = view.block_refs
    hashes = view.block_hash
    owners = list(view.block_owner)
    states = [
        (SHARED if r > 1 else USED) if r > 0 else (CACHED if h else FREE)
        for r, h in zip(refs, hashes)
    ]
    return BlockCells(states, owners)


class BlockMap(ScrollView, can_focus=True):
    """The KV pool as a grid of cells; rows are labelled with the first block id they hold."""

    DEFAULT_CSS = """
    BlockMap {
        height: 1fr;
        overflow-x: hidden;
    }
    """

    class Selected(Message):
        """A block was clicked: `request_id` is its owner (-1 for an unowned block)."""

        def __init__(self, request_id: int, block_id: int) -> None:
            super().__init__()
            self.request_id = request_id
            self.block_id = block_id

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.cells = BlockCells.empty()
        self.highlight: set[int] | frozenset[int] = frozenset()
        self._styles: dict[int, Style] = {}
        self._shared_styles: dict[int, Style] = {}
        self._per_row = 1
        self._gutter = 0

    # -- data ---------------------------------------------------------------------------------
    def set_cells(self, cells: BlockCells, highlight: set[int] | frozenset[int] = frozenset()) -> None:
        """Show `cells`; blocks in `highlight` (the selected request's table) are drawn as selected.

        Only rows whose content changed are repainted, so a step that touches a few blocks
        costs a few rows, not the whole map.
        """
        old, old_highlight = self.cells, self.highlight
        self.cells = cells
        self.highlight = highlight
        if len(cells.states) != len(old.states):
            self._relayout()
            self.refresh()
            return
        per_row = self._per_row
        changed_rows = {i // per_row for i in highlight.symmetric_difference(old_highlight)}
        if cells.states != old.states or cells.owners != old.owners:
            for i, (s0, s1, o0, o1) in enumerate(zip(old.states, cells.states, old.owners, cells.owners)):
                if s0 != s1 or o0 != o1:
                    changed_rows.add(i // per_row)
        if not changed_rows:
            return
        top = int(self.scroll_offset.y)
        height = self.scrollable_content_region.height
        width = self.size.width
        for row in changed_rows:
            if top <= row < top + height:
                self.refresh(Region(0, row - top, width, 1))

    def _relayout(self) -> None:
        n = len(self.cells.states)
        width = max(self.scrollable_content_region.width, 4)
        self._gutter = len(str(max(n - 1, 0))) + 1
        usable = max(width - self._gutter, 1)
        self._per_row = usable - usable % 10 if usable >= 20 else usable
        rows = (n + self._per_row - 1) // self._per_row if n else 0
        self.virtual_size = Size(self._gutter + self._per_row, rows)

    def on_resize(self) -> None:
        self._relayout()
        self.refresh()

    @property
    def blocks_per_row(self) -> int:
        return self._per_row

    def block_at(self, x: int, y: int) -> int | None:
        """The block id under content offset (x, y), accounting for scrolling; None outside the grid."""
        col = x - self._gutter
        row = y + int(self.scroll_offset.y)
        if col < 0 or col >= self._per_row or row < 0:
            return None
        index = row * self._per_row + col
        return index if index < len(self.cells.states) else None

    # -- rendering ----------------------------------------------------------------------------
    def _owner_style(self, owner: int, shared: bool) -> Style:
        table = self._shared_styles if shared else self._styles
        style = table.get(owner)
        if style is None:
            colour = owner_colour(owner) if owner >= 0 else "#bbbbbb"
            style = Style(color="#ffffff", bgcolor=colour, bold=True) if shared else Style(color=colour)
            table[owner] = style
        return style

    def _cell(self, state: int, owner: int) -> tuple[str, Style]:
        if state == FREE:
            return GLYPH[FREE], _FREE_STYLE
        if state == CACHED:
            return GLYPH[CACHED], _CACHED_STYLE
        return GLYPH[state], self._owner_style(owner, state == SHARED)

    def render_line(self, y: int) -> Strip:
        row = y + int(self.scroll_offset.y)
        states, owners = self.cells.states, self.cells.owners
        start = row * self._per_row
        width = self.scrollable_content_region.width
        if start >= len(states) or row < 0:
            return Strip.blank(width)
        end = min(start + self._per_row, len(states))
        highlight = self.highlight
        segments = [Segment(f"{start:>{self._gutter - 1}} ", _GUTTER_STYLE)]
        run_text: list[str] = []
        run_style: Style | None = None
        cell = self._cell
        for i in range(start, end):
            if i in highlight:
                glyph, style = SELECTED_GLYPH, _SELECTED_STYLE
            else:
                glyph, style = cell(states[i], owners[i])
            if style is not run_style:
                if run_text:
                    segments.append(Segment("".join(run_text), run_style))
                run_text = [glyph]
                run_style = style
            else:
                run_text.append(glyph)
        if run_text:
            segments.append(Segment("".join(run_text), run_style))
        return Strip(segments).adjust_cell_length(width)

    # -- input --------------------------------------------------------------------------------
    def on_click(self, event) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        block = self.block_at(offset.x, offset.y)
        if block is None:
            return
        self.post_message(self.Selected(self.cells.owners[block], block))
