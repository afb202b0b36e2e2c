"""Plain-text rendering for the one-shot commands: human byte sizes, SI counts and times, aligned tables,
titled key/value sections.

No dependencies (the one-shot CLI must start fast); output is plain text so it
pipes and diffs cleanly.
"""

from __future__ import annotations

from collections.abc import Sequence

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'; under 1 KiB -> '512 B'."""
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.2f} {_UNITS[unit]}"


_SI_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def human_count(n: float, unit: str = "", *, digits: str = ".2f", small: str = ".3g", sep: str = " ") -> str:
    """n with an SI prefix: 1.2e12 -> '1.20 T' (+ unit), 512 -> '512'. The one SI formatter (one-shot
    tables, the TUI, the ASCII plot): `digits` formats the scaled number, `small` a number under 1000
    (no prefix), `sep` goes between the number and the prefix or unit."""
    for scale, prefix in _SI_PREFIXES:
        if abs(n) >= scale:
            return f"{n / scale:{digits}}{sep}{prefix}{unit}"
    return f"{n:{small}}{sep}{unit}" if unit else f"{n:{small}}"


def human_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """An aligned table; align holds one 'l' or 'r' per column (default: first left, rest right)."""
    ncol = len(headers)
    align = align or "l" + "r" * (ncol - 1)
    widths = [max(len(str(headers[c])), *(len(str(r[c])) for r in rows)) if rows else len(headers[c])
              for c in range(ncol)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for c, cell in enumerate(cells):
            out.append(str(cell).ljust(widths[c]) if align[c] == "l" else str(cell).rjust(widths[c]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def format_sections(sections: Sequence[tuple[str, Sequence[tuple[str, str, str]]]]) -> str:
    """Titled blocks of (label, value, note) rows; labels and values aligned across all sections."""
    label_w = max((len(label) for _, rows in sections for label, _, _ in rows), default=0)
    value_w = max((len(value) for _, rows in sections for _, value, _ in rows), default=0)
    out: list[str] = []
    for title, rows in sections:
        if out:
            out.append("")
        out.append(title)
        for label, value, note in rows:
            out.append(f"  {label.ljust(label_w)}  {value.rjust(value_w)}  {note}".rstrip())
    return "\n".join(out)
