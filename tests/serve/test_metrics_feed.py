"""The metrics view's feed and attach's fallback against a stand-in server on loopback (stdlib http.server):
/metrics polled into Scrapes, a failing one a ScrapeFailed; attach picks the metrics view where
/kvscope/v1/snapshot is 404 and /metrics speaks vLLM, and says why not otherwise."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kvscope.cli.commands.attach import attach_app
from kvscope.cli.errors import UsageError
from kvscope.errors import KVScopeError
from kvscope.inspector.external.vllm_metrics import Scrape, ScrapeFailed
from kvscope.serve.client.metrics_feed import MetricsFeed
from kvscope.tui.metrics_app import MetricsApp
from support.waiting import wait_until

VLLM_LIKE = "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc 0.5\n"


class Server:
    """/metrics answers `body` (None: 404); /kvscope/v1/snapshot 404 (no plugin) unless `snapshot`."""

    def __init__(self, body: str | None, snapshot: bool = False) -> None:
        outer = self
        self.body = body

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.body if self.path == "/metrics" else None
                if snapshot and self.path == "/kvscope/v1/snapshot":
                    body = '{"events": [], "last_event_id": 0}'
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write((body or "not found").encode())

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_feed_polls_metrics_and_reports_failures():
    with Server(VLLM_LIKE) as srv:
        feed = MetricsFeed(srv.url, interval_s=0.05).start()
        items: list = []
        try:
            assert wait_until(lambda: feed.drain(items.append) >= 0 and len(items) >= 3, 10)
            srv.body = None
            assert wait_until(lambda: feed.drain(items.append) >= 0 and isinstance(items[-1], ScrapeFailed), 10)
        finally:
            feed.stop()
    assert isinstance(items[0], Scrape) and items[0].exposition.totals["vllm:kv_cache_usage_perc"] == 0.5
    assert "404" in items[-1].error and feed.kv_error is None


def test_attach_falls_back_to_the_metrics_view_only_where_vllms_metrics_are():
    with Server(VLLM_LIKE) as srv:
        app = attach_app(srv.url + "/", kv_events="tcp://127.0.0.1:9")
        assert isinstance(app, MetricsApp) and app.source.url == srv.url
        assert app.source.kv_events == "tcp://127.0.0.1:9"
        app.source.stop()  # never started: closes its HTTP client
    with Server("# TYPE up gauge\nup 1\n") as srv, pytest.raises(KVScopeError, match="vllm:kv_cache_usage_perc"):
        attach_app(srv.url)
    with Server(None) as srv, pytest.raises(KVScopeError, match="/metrics answered 404"):
        attach_app(srv.url)
    with Server(VLLM_LIKE, snapshot=True) as srv:  # kvscope's events answer: the full view, not this one
        with pytest.raises(UsageError, match="--metrics-view"):
            attach_app(srv.url, kv_events="tcp://127.0.0.1:9")
        app = attach_app(srv.url, kv_events="tcp://127.0.0.1:9", metrics_view=True)
        assert isinstance(app, MetricsApp)
        app.source.stop()
