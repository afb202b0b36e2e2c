"""The status line on top of the screen: the run's title and what RunInfo says of it (model, device, backend,
dtype, policy), the step shown (and, in a replay, the cursor's position), the run state, the delay between
steps, the damage a recording stopped at and an engine error.

Every field is a reactive the line redraws itself from: the app binds `state`, `delay_s` and `error` to its own
reactives (data_bind) and sets `info`, `step` and `position` as the model moves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.reactive import var

from kvscope.inspector.live.controller import FAILED, FINISHED, LOADING, PAUSED, RUNNING
from kvscope.tui.widgets.text_lines import TextLines

if TYPE_CHECKING:
    from kvscope.events.records import RunInfo

PLAYING = "playing"  # a replay moving on by itself
_STATE_STYLE = {RUNNING: "bold green", PAUSED: "bold yellow", FINISHED: "bold cyan", FAILED: "bold red",
                LOADING: "bold magenta", PLAYING: "bold green"}


class StatusLine(TextLines):
    """One line; `last_position` is the replay's (None for a live run, which has no position to show)."""

    info: var[RunInfo | None] = var(None, init=False)  # None before the run's RunInfo arrives
    step: var[int] = var(-1, init=False)
    position: var[int] = var(0, init=False)
    state: var[str] = var(LOADING, init=False)
    delay_s: var[float] = var(0.0, init=False)
    error: var[BaseException | None] = var(None, init=False)

    def __init__(self, title: str, *, last_position: int | None = None, damage: str = "",
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.last_position = last_position
        self.damage = damage
        self._show()

    def _show(self) -> None:
        info = self.info
        text = Text()
        text.append(" kvscope ", style="bold reverse")
        text.append(f" {self.title} ", style="bold")
        if info is not None:
            text.append(f"· {info.model} · {info.device}/{info.backend} · {info.dtype} · {info.policy} ",
                        style="dim")
        text.append("│ ")
        text.append(f"step {self.step}", style="bold")
        if self.last_position is not None:
            text.append(f" ({self.position}/{self.last_position})", style="dim")
        text.append(" │ ")
        text.append(self.state, style=_STATE_STYLE.get(self.state, "bold"))
        if self.delay_s:
            text.append(f" │ delay {self.delay_s:g} s")
        if self.damage:
            text.append(f" │ stopped at damage: {self.damage}", style="bold red")
        if self.error is not None:
            text.append(f" │ {self.error}", style="bold red")
        self.set_text(text)

    watch_info = watch_step = watch_position = watch_state = watch_delay_s = watch_error = _show
