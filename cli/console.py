"""Where the CLI's human-readable output goes: rich consoles for standard output and standard error, the
house table style, and plain-text rendering.

On a terminal: colour (none under NO_COLOR, which rich honours), the terminal's width, a unicode rule
under table headers. Piped or redirected: no escape codes, no wrapping (tables keep their natural width),
an ASCII rule, and no trailing spaces, so the output greps and diffs like plain text. rich is imported
only when a command prints something for people; `--json` output never goes through here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.box import Box
    from rich.console import Console, RenderableType
    from rich.table import Table

PIPE_WIDTH = 1000  # piped output is never wrapped: a table is as wide as its cells


def stdout_console() -> Console:
    """A console on the current standard output (made per use: tests swap sys.stdout)."""
    return _console(sys.stdout)


def stderr_console() -> Console:
    """A console on the current standard error (progress bars)."""
    return _console(sys.stderr)


def _console(file: Any) -> Console:
    from rich.console import Console

    return Console(file=file, width=None if is_terminal(file) else PIPE_WIDTH, highlight=False, soft_wrap=False)


def is_terminal(file: Any) -> bool:
    """Whether `file` is a terminal (False for a closed or fake stream)."""
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def emit(*renderables: RenderableType | str, console: Console | None = None) -> None:
    """Print to standard output (or `console`), one renderable under the other: as rich draws it on a
    terminal, as plain text otherwise."""
    from rich.console import Group

    console = console or stdout_console()
    if console.is_terminal:
        console.print(Group(*renderables))
        return
    console.file.write(plain_text(*renderables, console=console) + "\n")


def plain_text(*renderables: RenderableType | str, console: Console | None = None) -> str:
    """The renderables, one under the other, as plain text with no trailing spaces (what `emit` writes to a
    pipe)."""
    from rich.console import Console, Group

    width = console.width if console is not None else PIPE_WIDTH
    capture = Console(width=width, no_color=True, highlight=False, soft_wrap=False, color_system=None,
                      force_terminal=False, legacy_windows=False)
    with capture.capture() as out:
        capture.print(Group(*renderables))
    return "\n".join(line.rstrip() for line in out.get().rstrip("\n").split("\n"))


def rule_box(console: Console | None = None) -> Box:
    """The house table box: no frame, a rule under the header; ASCII dashes when not on a terminal."""
    from rich.box import Box

    console = console or stdout_console()
    char = "─" if console.is_terminal else "-"
    return Box(f"    \n    \n {char}{char} \n    \n    \n    \n    \n    \n", ascii=char == "-")


def data_table(*headers: str, justify: str = "", console: Console | None = None) -> Table:
    """A table in the house style: headers (`justify` one 'l' / 'r' per column; default the first left, the
    rest right), no frame, the first column flush with the left margin."""
    from rich.table import Table

    table = Table(box=rule_box(console), show_edge=False, pad_edge=False, header_style="bold",
                  collapse_padding=False)
    justify = justify or "l" + "r" * (len(headers) - 1)
    for header, side in zip(headers, justify):
        table.add_column(header, justify="left" if side == "l" else "right", no_wrap=side == "r")
    return table


def key_value_table(label_width: int = 0, value_width: int = 0, notes: bool = False) -> Table:
    """A headerless label / value (/ note) table: labels left, values right, notes dim; the widths line
    several tables up with each other."""
    from rich.table import Table

    table = Table(box=None, show_header=False, show_edge=False, pad_edge=False)
    table.add_column(min_width=label_width, no_wrap=True)
    table.add_column(min_width=value_width, justify="right", style="bold", no_wrap=True)
    if notes:
        table.add_column(style="dim")
    return table
