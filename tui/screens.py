"""Modal screens: the key help, and the replay's "jump to step N" prompt."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from kvscope.tui.panels.info_panel import legend

LIVE_KEYS = """\
space   pause / resume the engine
n       run exactly one scheduler step (while paused)
+ / -   slower / faster: a delay between steps, for teaching
r       restart the workload on a fresh engine state
"""
REPLAY_KEYS = """\
→ / l   one step forward        ← / h   one step back
g       jump to step N          home / end   first / last step
space   play / pause
"""
COMMON_KEYS = """\
click   a block or a batch-timeline row (or enter on a request row) selects its request:
        its block table and its text (prompt, output so far) show under the map
escape  clear the selection
?       this help               q   quit
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape,question_mark,q", "dismiss", "close")]

    def __init__(self, replay: bool) -> None:
        super().__init__()
        self.replay = replay

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static("[b]kvscope keys[/b]\n")
            yield Static(REPLAY_KEYS if self.replay else LIVE_KEYS, markup=False)
            yield Static(COMMON_KEYS, markup=False)
            yield Static(legend())
            yield Static("\n[dim]press ? or escape to close[/dim]")


class GotoScreen(ModalScreen[int | None]):
    """Asks for a step number; dismisses with it, or None on escape / bad input."""

    BINDINGS = [("escape", "cancel", "cancel")]

    def __init__(self, first: int, last: int) -> None:
        super().__init__()
        self.first = first
        self.last = last

    def compose(self) -> ComposeResult:
        with Vertical(id="goto-box"):
            yield Static(f"jump to step ({self.first}..{self.last}), enter to go")
            yield Input(placeholder="step", type="integer", id="goto-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.dismiss(int(event.value))
        except ValueError:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
