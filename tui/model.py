"""What the TUI renders from: an EngineView, the Metrics, a StepHistory, the batch timeline and the token
stream, all fed by the same events.

Live runs feed it from the controller's queue, replays from a recording; the widgets read
it only on the UI thread.
"""

from __future__ import annotations

from typing import Any

from kvscope.inspector.batch_timeline import BatchTimeline
from kvscope.inspector.event_fold import fan_out
from kvscope.inspector.metrics import Metrics
from kvscope.inspector.state import EngineView
from kvscope.inspector.step_history import StepHistory
from kvscope.inspector.token_stream import TokenStream


class UIModel:
    """A bus-style subscriber: `model(event)` folds one event into every consumer."""

    def __init__(self) -> None:
        self.view = EngineView()
        self.metrics = Metrics()
        self.history = StepHistory()
        self.timeline = BatchTimeline()
        self.text = TokenStream()
        self.events_seen = 0
        self._handlers = fan_out(self.view, self.metrics, self.history, self.timeline, self.text)

    def __call__(self, event: Any) -> None:
        for handler, fold in self._handlers.get(event.kind, ()):
            handler(fold, event)
        self.events_seen += 1
