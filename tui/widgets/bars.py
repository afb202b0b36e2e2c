"""Small text-drawing helpers shared by the panels: horizontal bars, sparklines, and a Static update that
skips unchanged text (byte sizes, SI prefixes and percentages: kvscope.inspector.human_units)."""

from __future__ import annotations

from rich.text import Text

_EIGHTHS = " ▏▎▍▌▋▊▉"


def fraction_bar(fraction: float, width: int, colour: str, empty: str = "#3a3a3a") -> Text:
    """A bar `width` cells wide filled to `fraction` (clamped to [0, 1]) with eighth-cell resolution."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = Text()
    text.append("█" * full, style=colour)
    if full < width:
        text.append(_EIGHTHS[part] if part else "", style=f"{colour} on {empty}")
        text.append(" " * (width - full - (1 if part else 0)), style=f"on {empty}")
    return text


def bar_runs(parts: list[tuple[int, str]], total: int, width: int, empty: str = "#3a3a3a") -> list[tuple[str, str]]:
    """Cells split in proportion to each (value, colour) part of `total`, the rest drawn empty, as
    (text, style) runs."""
    if total <= 0:
        return [(" " * width, f"on {empty}")]
    runs = []
    used = 0
    for value, colour in parts:
        cells = min(round(value * width / total), width - used)
        if value > 0 and cells == 0 and used < width:
            cells = 1  # a non-zero part stays visible
        if cells:
            runs.append(("█" * cells, colour))
        used += cells
    if used < width:
        runs.append((" " * (width - used), f"on {empty}"))
    return runs


def stacked_bar(parts: list[tuple[int, str]], total: int, width: int, empty: str = "#3a3a3a") -> Text:
    """bar_runs as a Text."""
    return Text.assemble(*bar_runs(parts, total, width, empty))


_SPARKS = "▁▂▃▄▅▆▇█"


def spark_text(values: list[float], width: int, colour: str) -> Text:
    """The last `width` values as a one-line sparkline, one cell per value, oldest on the left,
    scaled to the largest shown (a lone ▁ row when all are zero). One colour: one segment."""
    values = values[-width:] if width > 0 else []
    top = max(values, default=0.0)
    if top <= 0:
        return Text(_SPARKS[0] * len(values), style=colour)
    last = len(_SPARKS) - 1
    return Text("".join(_SPARKS[min(max(round(v / top * last), 0), last)] for v in values), style=colour)


def same_text(a: Text, b: Text) -> bool:
    """The same characters in the same styles (what a redraw would show)."""
    return a.plain == b.plain and a.spans == b.spans and a.style == b.style


def update_text(widget, text: Text) -> None:
    """Static.update without a relayout (every panel has a fixed size), skipped when nothing changed."""
    last = getattr(widget, "_kvscope_text", None)
    if last is not None and same_text(last, text):
        return
    widget._kvscope_text = text
    widget.update(text, layout=False)
