"""What the TUI renders from: an EngineView, the Metrics, a StepHistory, the batch timeline and the token
stream, all fed by the same events.

Live runs feed it from the controller's queue, replays from a recording; the widgets read
it only on the UI thread. A disaggregated deployment's events arrive as EngineEvents: every engine gets an
EngineView of its own (`engines`, for its block map), and the focus engine (the first decode engine, where
the tokens come from) feeds the main view, metrics, history, timeline and text; the proxy's own events,
under its ids, are left out.

MetricsModel is the metrics view's (attach on a server without kvscope's plugin): vLLM's /metrics and KV events.
"""

from __future__ import annotations

from typing import Any

from kvscope.inspector.batch_timeline import BatchTimeline
from kvscope.inspector.event_fold import fan_out
from kvscope.inspector.external.kv_events import KVBlockSet, KVEventBatch, PublisherRestart, SequenceGap
from kvscope.inspector.external.vllm_metrics import Scrape, ScrapeFailed, VLLMMetrics
from kvscope.inspector.live.controller import EngineEvent
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
        self.engines: dict[str, EngineView] = {}  # a deployment's engines (the focus one's is `view`)
        self.focus: str | None = None
        self._handlers = fan_out(self.view, self.metrics, self.history, self.timeline, self.text)

    def __call__(self, event: Any) -> None:
        self.events_seen += 1
        if event.kind == EngineEvent.kind:
            self._engine_event(event)
        elif not self.engines:
            for handler, fold in self._handlers.get(event.kind, ()):
                handler(fold, event)

    def _engine_event(self, tagged: EngineEvent) -> None:
        name = tagged.engine
        if self.focus is None and name.startswith("decode"):
            self.focus = name
            self.engines[name] = self.view
        if tagged.event is None:  # an engine announced
            self.engines.setdefault(name, EngineView())
            return
        if name == self.focus:
            for handler, fold in self._handlers.get(tagged.event.kind, ()):
                handler(fold, tagged.event)
            return
        view = self.engines.get(name)
        if view is None:
            view = self.engines[name] = EngineView()
        view.apply(tagged.event)


class MetricsModel:
    """What the metrics view renders from (a server without kvscope's plugin): the fold of its /metrics
    scrapes and, with --kv-events, the cached-block set from vLLM's KV events. `model(item)` folds one item
    of a MetricsFeed; `kv_items` counts what came from the KV events."""

    def __init__(self) -> None:
        self.metrics = VLLMMetrics()
        self.blocks = KVBlockSet()
        self.kv_items = 0

    def __call__(self, item: Any) -> None:
        if isinstance(item, (Scrape, ScrapeFailed)):
            self.metrics.take(item)
        elif isinstance(item, (KVEventBatch, SequenceGap, PublisherRestart)):
            self.kv_items += 1
            self.blocks.take(item)
