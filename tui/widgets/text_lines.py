"""TextLines: a few lines of rich Text that change every frame (status line, counters, meters,
sparklines), drawn through the Line API.

Static would do, at about four times the cost per line: each update goes through Textual's visual
pipeline (rich Text -> Content -> strips, with wrapping). Here the lines are split once per change,
rendered to segments on first paint, never wrapped (what does not fit is cropped), and only the lines
whose text changed are repainted. Setting the same text again costs a comparison.
"""

from __future__ import annotations

from rich.text import Text
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

from kvscope.tui.widgets.bars import same_text


class TextLines(Widget):
    """Shows `text` line by line; `set_text` swaps it, repainting only the lines that differ."""

    DEFAULT_CSS = """
    TextLines {
        height: auto;
    }
    """

    def __init__(self, text: Text | str = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._lines: list[Text] = []
        self._strips: list[Strip | None] = []  # rendered on first paint; None until then
        self._set_lines(text)

    @property
    def text(self) -> Text:
        """The lines shown, joined again."""
        return Text("\n").join(self._lines)

    def render(self) -> Text:
        """The whole text, as Static.render gives it (Textual draws through render_line instead)."""
        return self.text

    def set_text(self, text: Text | str) -> None:
        count = len(self._lines)
        changed = self._set_lines(text)
        if len(self._lines) != count:
            self.refresh(layout=True)
            return
        width = self.size.width
        for y in changed:
            self.refresh(Region(0, y, width, 1))

    def _set_lines(self, text: Text | str) -> list[int]:
        """Take `text`, keeping the rendered strip of every line that did not change; returns the
        indices of the lines that did."""
        if isinstance(text, str):
            text = Text(text)
        lines = list(text.split("\n", allow_blank=True)) if text.plain else [text]
        old_lines, old_strips = self._lines, self._strips
        strips: list[Strip | None] = []
        changed = []
        for y, line in enumerate(lines):
            if y < len(old_lines) and same_text(old_lines[y], line):
                strips.append(old_strips[y])
            else:
                strips.append(None)
                changed.append(y)
        self._lines, self._strips = lines, strips
        return changed

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return max((line.cell_len for line in self._lines), default=0)

    def render_line(self, y: int) -> Strip:
        if not 0 <= y < len(self._lines):
            return Strip.blank(self.size.width)
        strip = self._strips[y]
        if strip is None:
            line = self._lines[y]
            strip = self._strips[y] = Strip(list(line.render(self.app.console)), line.cell_len)
        return strip
