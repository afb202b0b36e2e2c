"""What `kvscope attach` reads from a server without kvscope's plugin: its `/metrics` every `interval_s`
(a thread), and, with `kv_events`, vLLM's KV events (kv_events_client). Both land in one queue that the
metrics view drains on its own thread (`drain`), as a RunController's events do.

The items: Scrape / ScrapeFailed (kvscope.inspector.external.vllm_metrics), KVEventBatch / SequenceGap /
PublisherRestart (kvscope.inspector.external.kv_events). Nothing is steered: there is nothing to pause.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from kvscope.inspector.external.prometheus import Exposition, parse_exposition
from kvscope.inspector.external.vllm_metrics import Scrape, ScrapeFailed
from kvscope.inspector.live.controller import drain_queue
from kvscope.serve.client.auth_header import auth_headers
from kvscope.serve.client.kv_events_client import KVEventsSubscriber

Sink = Callable[[Any], None]


def get_metrics(client: httpx.Client, url: str) -> Exposition:
    """GET URL/metrics, parsed; httpx.HTTPError or ValueError when there is no exposition."""
    r = client.get(url.rstrip("/") + "/metrics")
    if r.status_code != 200:
        raise ValueError(f"/metrics answered {r.status_code}")
    return parse_exposition(r.text)


class MetricsFeed:
    """The poller and the KV-event subscriber (see module docstring); `start()`, `stop()`, `drain(sink)`."""

    def __init__(self, url: str, *, api_key: str | None = None, interval_s: float = 1.0,
                 kv_events: str | None = None, kv_replay: str | None = None, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.interval_s = interval_s
        self.kv_events = kv_events
        self.kv_replay = kv_replay
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._client = httpx.Client(timeout=timeout_s, headers=auth_headers(api_key))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kvscope-metrics", daemon=True)
        self.subscriber = (KVEventsSubscriber(kv_events, self._items.put, replay_endpoint=kv_replay)
                           if kv_events else None)

    def start(self) -> MetricsFeed:
        if self.subscriber is not None:
            self.subscriber.start()
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self.subscriber is not None:
            self.subscriber.stop(timeout)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._client.close()

    def scrape_now(self) -> None:
        """One scrape into the queue, on the calling thread."""
        at = time.monotonic()
        try:
            self._items.put(Scrape(at, get_metrics(self._client, self.url)))
        except (httpx.HTTPError, ValueError) as exc:
            self._items.put(ScrapeFailed(at, f"{type(exc).__name__}: {exc}"))

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.scrape_now()
            self._stop.wait(self.interval_s)

    @property
    def kv_error(self) -> BaseException | None:
        return self.subscriber.error if self.subscriber is not None else None

    def drain(self, sink: Sink, limit: int | None = None) -> int:
        """Hand the queued scrapes and KV-event items, oldest first, to `sink` on the calling thread."""
        return drain_queue(self._items, sink, limit)
