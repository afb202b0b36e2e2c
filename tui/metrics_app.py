"""The metrics view: `kvscope attach` on a server that has vLLM's `/metrics` but not kvscope's plugin.

MetricsApp draws a MetricsModel (vLLM's /metrics folded scrape by scrape, and with --kv-events the cached
blocks by hash) from a MetricsSource (kvscope.serve.client.metrics_feed.MetricsFeed), which it starts, drains
at a steady rate (`sync`) and stops. `model` is reactive: mutated when items were folded, its watcher redraws
the panels; `error` (the latest failed scrape) is shown in the header. One panel says what the mode cannot
show. Nothing here steers the server: the keys are help and quit.
"""

from __future__ import annotations

from typing import Any, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.widget import Widget
from textual.widgets import Footer, Static

from kvscope.tui.model import MetricsModel
from kvscope.tui.panels.metrics_view import (
    CANNOT_SHOW,
    KVEventsPanel,
    LatencyQuantilesPanel,
    QueuesPanel,
    ThroughputPanel,
)
from kvscope.tui.widgets.text_lines import TextLines

REFRESH_HZ = 4
MODE = "metrics view"


class MetricsSource(Protocol):
    """What the view reads: a server's URL, the KV-event endpoints (None without), items to drain."""

    url: str
    kv_events: str | None
    kv_replay: str | None

    def start(self) -> Any: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def drain(self, sink: Any, limit: int | None = None) -> int: ...
    @property
    def kv_error(self) -> BaseException | None: ...


def _panel(widget: Widget, title: str) -> Widget:
    widget.add_class("panel")
    widget.border_title = title
    return widget


class MetricsApp(App[int]):
    CSS_PATH = "kvscope.tcss"
    TITLE = "kvscope"
    BINDINGS = [Binding("q", "quit", "quit")]

    model: var[MetricsModel] = var(MetricsModel, init=False)
    """The folds drawn; mutated (mutate_reactive) after items were drained into it."""
    error: var[str | None] = var(None, init=False)
    """The latest failed scrape (None once one succeeds again)."""

    def __init__(self, source: MetricsSource, *, title: str = "", refresh_hz: float = REFRESH_HZ,
                 deterministic: bool = False) -> None:
        super().__init__()
        self.source = source
        self.run_title = title or f"attached to {source.url}"
        self.refresh_hz = refresh_hz
        self.deterministic = deterministic
        self.mode_name = MODE

    def compose(self) -> ComposeResult:
        self._header = TextLines(id="status")
        yield self._header
        with Horizontal(id="metrics-body"):
            with Vertical(id="metrics-left"):
                self._queues = QueuesPanel(id="queues")
                yield _panel(self._queues, "queues · KV cache · prefix cache (vLLM /metrics)")
                self._latency = LatencyQuantilesPanel(frozen=self.deterministic, id="quantiles")
                yield _panel(self._latency, "latency: histogram deltas since attach")
                self._throughput = ThroughputPanel(frozen=self.deterministic, id="throughput")
                yield _panel(self._throughput, "tokens & requests")
            self._kv = KVEventsPanel(id="kv-events")
            yield _panel(self._kv, "cached blocks by hash (vLLM KV events)")
        self._limits = Static(Text(CANNOT_SHOW), id="cannot-show")
        yield _panel(self._limits, "what this mode cannot show")
        yield Footer()

    def on_mount(self) -> None:
        self.source.start()
        self.set_interval(1.0 / self.refresh_hz, self.sync)
        self.refresh_panels()

    def on_unmount(self) -> None:
        self.source.stop()

    def sync(self) -> None:
        """Drain what the feed gathered into the model (the refresh timer calls it; tests too)."""
        if not self.is_running:
            return
        if self.source.drain(self.model):
            self.mutate_reactive(MetricsApp.model)
        self.error = self.model.metrics.last_error

    def watch_model(self) -> None:
        self.refresh_panels()

    def watch_error(self) -> None:
        self._show_header()

    def _show_header(self) -> None:
        reading = self.model.metrics.reading
        text = Text()
        text.append(" kvscope ", style="bold reverse")
        text.append(f" {self.run_title} ", style="bold")
        text.append(f"· {self.mode_name} (no kvscope plugin) ", style="bold yellow")
        if reading is not None:
            text.append(f"· vLLM metrics, {reading.naming} names · {reading.scrapes} scrapes ", style="dim")
        else:
            text.append("· waiting for the first scrape ", style="dim")
        if self.source.kv_events:
            text.append(f"· KV events {self.source.kv_events} ", style="dim")
        if self.error is not None:
            text.append(f"│ /metrics: {self.error}", style="bold red")
        self._header.set_text(text)

    def refresh_panels(self) -> None:
        model = self.model
        reading = model.metrics.reading
        if reading is not None:
            self._queues.update_from(reading)
            self._latency.update_from(reading)
            self._throughput.update_from(reading)
        kv_error = self.source.kv_error
        self._kv.update_from(model.blocks, self.source.kv_events, self.source.kv_replay,
                             f"{type(kv_error).__name__}: {kv_error}" if kv_error is not None else None)
        self._show_header()
