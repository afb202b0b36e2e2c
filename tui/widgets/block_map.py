"""The block-table map: one cell per physical KV block, coloured by owning request.

A Line-API widget (ScrollView + render_line): only the visible rows are built, each
row as a few merged segments, so pools of tens of thousands of blocks stay cheap.
Glyphs differ as well as colours, so the states read without colour too:

    █ used (owner colour)   ◆ shared, ref count > 1   ░ cached, free but reusable   · free
    ▣ blocks of the selected request   × handed back by speculative decoding this step
    ⇄ pinned: a finished prompt's blocks held for a KV transfer to a decode engine (disaggregation)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from textual.filter import ANSIToTruecolor, LineFilter
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from kvscope.tui.widgets.request_selected import RequestSelected

if TYPE_CHECKING:
    from kvscope.inspector.state import EngineView

FREE, CACHED, USED, SHARED = 0, 1, 2, 3
STATE_CODES = {"free": FREE, "cached": CACHED, "used": USED, "shared": SHARED}

OWNER_COLOURS = (
    "#4e9af1", "#f08c3a", "#5fbf5f", "#d95f5f", "#a97fd6", "#c79a6b", "#e07cc0", "#9aa3ad",
    "#c8c83c", "#3cc8c8", "#7f8ff0", "#f0c24e",
)
GLYPH = {FREE: "·", CACHED: "░", USED: "█", SHARED: "◆"}
SELECTED_GLYPH = "▣"
ROLLBACK_GLYPH = "×"  # a block speculative decoding handed back this step (shown until the next one)
PINNED_GLYPH = "⇄"    # a block pinned for a KV transfer (disaggregation)
_FREE_STYLE = Style(color="#4a4a4a")
_CACHED_STYLE = Style(color="#5f9ea0")
_SELECTED_STYLE = Style(color="#000000", bgcolor="#ffd700", bold=True)
_ROLLBACK_STYLE = Style(color="#ffffff", bgcolor="#b03030", bold=True)
_PINNED_STYLE = Style(color="#ffffff", bgcolor="#2a7f7f", bold=True)
_GUTTER_STYLE = Style(color="#707070")


def owner_colour(request_id: int) -> str:
    return OWNER_COLOURS[request_id % len(OWNER_COLOURS)]


# Per-block draw codes: FREE, CACHED, then one code per owner colour for used and for shared
# blocks, then the selection. Blocks with equal codes in a row merge into one segment.
_CODE_USED = 2
_CODE_SHARED = _CODE_USED + len(OWNER_COLOURS)
_CODE_SELECTED = _CODE_SHARED + len(OWNER_COLOURS)
_CODE_ROLLBACK = _CODE_SELECTED + 1
_CODE_PINNED = _CODE_ROLLBACK + 1
_CODE_GLYPH = (
    [GLYPH[FREE], GLYPH[CACHED]] + [GLYPH[USED]] * len(OWNER_COLOURS) + [GLYPH[SHARED]] * len(OWNER_COLOURS)
    + [SELECTED_GLYPH, ROLLBACK_GLYPH, PINNED_GLYPH]
)
_CODE_STYLE = (
    [_FREE_STYLE, _CACHED_STYLE] + [Style(color=c) for c in OWNER_COLOURS]
    + [Style(color="#ffffff", bgcolor=c, bold=True) for c in OWNER_COLOURS]
    + [_SELECTED_STYLE, _ROLLBACK_STYLE, _PINNED_STYLE]
)


@dataclass(slots=True)
class BlockCells:
    """What the map draws: per physical block a draw code (state and owner colour, see _CODE_*) and an
    owner id (-1 none)."""

    codes: list[int]
    owners: list[int]

    @classmethod
    def empty(cls) -> BlockCells:
        return cls([], [])


def block_code(refs: int, hashed: int, owner: int) -> int:
    """The draw code of one block from its ref count, chain hash (0 none) and owner."""
    if refs > 0:
        return (_CODE_SHARED if refs > 1 else _CODE_USED) + owner % len(OWNER_COLOURS)
    return CACHED if hashed else FREE


def view_code(view: EngineView, b: int) -> int:
    """The draw code of block b of an EngineView: its state and owner, a rollback flash or a transfer's pin."""
    refs = view.block_refs[b]
    if not refs and b in view.rolled_back:
        return _CODE_ROLLBACK
    if refs and b in view.pinned:
        return _CODE_PINNED
    return block_code(refs, view.block_hash[b], view.block_owner[b])


def cells_from_view(view: EngineView) -> BlockCells:
    """Read the per-block state and owner out of an EngineView (kvscope.inspector.state): the whole pool,
    which BlockMap.show_view needs only for a new view or after a reset."""
    codes = [block_code(r, h, o) for r, h, o in zip(view.block_refs, view.block_hash, view.block_owner)]
    for b in view.rolled_back | view.pinned:
        codes[b] = view_code(view, b)
    return BlockCells(codes, list(view.block_owner))


class BlockMap(ScrollView, can_focus=True):
    """The KV pool as a grid of cells; rows are labelled with the first block id they hold."""

    DEFAULT_CSS = """
    BlockMap {
        height: 1fr;
        overflow-x: hidden;
    }
    """

    class Selected(RequestSelected):
        """A block was clicked: `request_id` is its owner (-1 for an unowned block)."""

        def __init__(self, block_map: BlockMap, request_id: int, block_id: int) -> None:
            super().__init__(block_map, request_id)
            self.block_id = block_id

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.cells = BlockCells.empty()
        self.highlight: set[int] | frozenset[int] = frozenset()
        self._codes: list[int] = []  # what is drawn: the cells' codes with the selection on top
        self._view: EngineView | None = None  # the EngineView last shown by show_view, and its generation
        self._generation = -1
        self._per_row = 1
        self._gutter = 0
        self._cell = 1  # columns per block: wider cells when the pool is small enough to fit anyway
        self._run_segments: dict[tuple[int, int], Segment] = {}  # (code, run length) -> its Segment

    # -- data ---------------------------------------------------------------------------------
    def show_view(self, view: EngineView, touched: AbstractSet[int],
                  highlight: set[int] | frozenset[int] = frozenset()) -> None:
        """Show an EngineView, recomputing only the `touched` blocks (those it touched since the last
        call: the app takes them from the view, EngineView.take_touched_blocks) or the whole pool for a
        new view, after a reset or when the pool grew; so a refresh costs what the step changed, not
        what the pool holds."""
        if (view is not self._view or view.generation != self._generation
                or len(view.block_refs) != len(self.cells.codes)):
            self._view, self._generation = view, view.generation
            self.set_cells(cells_from_view(view), highlight)
            return
        codes, owners, view_owners = self.cells.codes, self.cells.owners, view.block_owner
        for b in touched:
            owners[b] = view_owners[b]
            codes[b] = view_code(view, b)
        self._redraw(touched | (highlight ^ self.highlight), highlight)

    def set_cells(self, cells: BlockCells, highlight: set[int] | frozenset[int] = frozenset()) -> None:
        """Show `cells`; blocks in `highlight` (the selected request's table) are drawn as selected.

        Each block becomes one small int (its glyph + colour); only rows whose ints changed are
        repainted, so a step that touches a few blocks costs a few rows, not the whole map.
        """
        codes = list(cells.codes)
        for b in highlight:
            if 0 <= b < len(codes):
                codes[b] = _CODE_SELECTED
        old_codes = self._codes
        self.cells = cells
        self.highlight = highlight
        self._codes = codes
        if len(codes) != len(old_codes):
            self._relayout()
            self.refresh()
            return
        per_row = self._per_row
        top = int(self.scroll_offset.y)
        rows = range(top, top + self.scrollable_content_region.height)
        self._refresh_rows([row for row in rows if codes[row * per_row:(row + 1) * per_row]
                            != old_codes[row * per_row:(row + 1) * per_row]])

    def _redraw(self, blocks: AbstractSet[int], highlight: set[int] | frozenset[int]) -> None:
        """Recompute the drawn code of `blocks` (cells or selection changed) and repaint their rows."""
        self.highlight = highlight
        drawn, codes, per_row = self._codes, self.cells.codes, self._per_row
        n = len(drawn)
        for b in blocks:
            if 0 <= b < n:
                drawn[b] = _CODE_SELECTED if b in highlight else codes[b]
        self._refresh_rows({b // per_row for b in blocks})

    def _refresh_rows(self, rows: Iterable[int]) -> None:
        """Repaint the visible ones of these rows, each run of adjacent rows as one region (not the
        scrollbar column: it needs no repaint)."""
        top = int(self.scroll_offset.y)
        height = self.scrollable_content_region.height
        width = self.scrollable_content_region.width
        visible = sorted(row - top for row in rows if top <= row < top + height)
        start = 0
        for i, y in enumerate(visible):
            if i + 1 == len(visible) or visible[i + 1] != y + 1:
                self.refresh(Region(0, visible[start], width, y - visible[start] + 1))
                start = i + 1

    def _relayout(self) -> None:
        n = len(self.cells.codes)
        width = max(self.scrollable_content_region.width, 4)
        height = max(self.scrollable_content_region.height, 1)
        self._gutter = len(str(max(n - 1, 0))) + 1
        usable = max(width - self._gutter, 1)
        for cell in (3, 2, 1):  # the widest cell that still shows the whole pool without scrolling
            slots = max(usable // cell, 1)
            per_row = slots - slots % 10 if slots >= 20 else slots
            rows = (n + per_row - 1) // per_row if n else 0
            if rows <= height or cell == 1:
                break
        if cell != self._cell:
            self._run_segments.clear()
        self._cell, self._per_row = cell, per_row
        self.virtual_size = Size(self._gutter + per_row * cell, rows)

    def on_resize(self) -> None:
        self._relayout()
        self.refresh()

    def offset_of(self, block: int) -> tuple[int, int]:
        """Content offset (x, y) of a block's cell, with the map scrolled to the top."""
        return self._gutter + (block % self._per_row) * self._cell, block // self._per_row

    def block_at(self, x: int, y: int) -> int | None:
        """The block id under content offset (x, y), accounting for scrolling; None outside the grid."""
        col = (x - self._gutter) // self._cell if x >= self._gutter else -1
        row = y + int(self.scroll_offset.y)
        if col < 0 or col >= self._per_row or row < 0:
            return None
        index = row * self._per_row + col
        return index if index < len(self.cells.codes) else None

    # -- rendering ----------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        row = y + int(self.scroll_offset.y)
        codes = self._codes
        start = row * self._per_row
        width = self.scrollable_content_region.width
        if start >= len(codes) or row < 0:
            return Strip.blank(width)
        end = min(start + self._per_row, len(codes))
        segments = [Segment(f"{start:>{self._gutter - 1}} ", _GUTTER_STYLE)]
        add = segments.append
        # run-length encode the row by hand (a third of itertools.groupby's cost at ~100 runs a row),
        # each (code, run length) drawn by one shared Segment
        run_segment = self._run_segment
        cached = self._run_segments.get
        prev, n = codes[start], 0
        for code in codes[start:end]:
            if code == prev:
                n += 1
            else:
                add(cached((prev, n)) or run_segment(prev, n))
                prev, n = code, 1
        add(cached((prev, n)) or run_segment(prev, n))
        used = self._gutter + (end - start) * self._cell  # every glyph is one column wide
        if used < width:
            segments.append(Segment(" " * (width - used)))
        return Strip(segments, max(used, width))

    def _run_segment(self, code: int, n: int) -> Segment:
        glyph = _CODE_GLYPH[code] if self._cell == 1 else _CODE_GLYPH[code] * (self._cell - 1) + " "
        segment = self._run_segments[(code, n)] = Segment(glyph * n, _CODE_STYLE[code])
        return segment

    def get_line_filters(self) -> Sequence[LineFilter]:
        """Every style here is truecolor already, so the app's ANSI-to-truecolor pass would only rebuild
        each row's ~100 segments unchanged; the other filters (NO_COLOR, dim) still apply."""
        return [f for f in super().get_line_filters() if not isinstance(f, ANSIToTruecolor)]

    # -- input --------------------------------------------------------------------------------
    def on_click(self, event) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        block = self.block_at(offset.x, offset.y)
        if block is None:
            return
        self.post_message(self.Selected(self, self.cells.owners[block], block))
