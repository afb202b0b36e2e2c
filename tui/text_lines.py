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


def _same(a: Text, b: Text) -> bool:
    return a.plain == b.plain and a.spans == b.spans and a.style == b.style


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
        self._strips: list[Strip | None] = []
        self._set_lines(text)

    @property
    def text(self) -> Text:
        """The lines shown, joined again."""
        return Text("\n").join(self._lines)

    def render(self) -> Text:
        """The whole text, as Static.render gives it (Textual draws through render_line instead)."""
        return self.text

    def set_text(self, text: Text | str) -> None:
        old = self._lines
        new = self._set_lines(text)
        if len(new) != len(old):
            self.refresh(layout=True)
            return
        width = self.size.width
        for y, (a, b) in enumerate(zip(old, new)):
            if not _same(a, b):
                self.refresh(Region(0, y, width, 1))

    def _set_lines(self, text: Text | str) -> list[Text]:
        if isinstance(text, str):
            text = Text(text)
        lines = list(text.split("\n", allow_blank=True)) if text.plain else [text]
        old = self._lines
        strips = [old_strip if y < len(old) and _same(old[y], line) else None
                  for y, (line, old_strip) in enumerate(zip(lines, self._strips + [None] * len(lines)))]
        self._lines, self._strips = lines, strips
        return lines

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
