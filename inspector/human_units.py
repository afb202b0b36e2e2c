"""Numbers for people: byte sizes (KiB, MiB, ...), SI counts (k, M, G, ...), durations and fractions as
percentages. The one implementation of each, shared by the command line, the TUI and the roofline
plot. No dependencies (the one-shot commands must start fast).
"""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float, digits: str = ".2f") -> str:
    """1536 -> '1.50 KiB'; under 1 KiB -> '512 B'. The one byte-size format (the command line, the TUI's
    titles and device panel): `digits` formats the scaled number ('.0f': '2 KiB', '.1f': '450.3 MiB')."""
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:{digits}} {_UNITS[unit]}"


_SI_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def human_count(n: float, unit: str = "", *, digits: str = ".2f", small: str = ".3g", sep: str = " ") -> str:
    """n with an SI prefix: 1.2e12 -> '1.20 T' (+ unit), 512 -> '512'. The one SI formatter (one-shot
    tables, the TUI, the ASCII plot): `digits` formats the scaled number, `small` a number under 1000
    (no prefix), `sep` goes between the number and the prefix or unit."""
    for scale, prefix in _SI_PREFIXES:
        if abs(n) >= scale:
            return f"{n / scale:{digits}}{sep}{prefix}{unit}"
    return f"{n:{small}}{sep}{unit}" if unit else f"{n:{small}}"


def percent(fraction: float) -> str:
    """0.4217 -> '42.2%': the one format for fractions (the TUI, bench tables, the headless summary)."""
    return f"{100 * fraction:.1f}%"


def human_seconds(s: float) -> str:
    """0.0123 -> '12.300 ms'; seconds, milliseconds or microseconds."""
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"
