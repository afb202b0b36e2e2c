"""`kvscope attach URL` (the TUI on a running `kvscope serve`) and `kvscope trace --attach URL` (a live
server's timeline for S seconds). Both read the server's snapshot and event stream through
kvscope.serve.client.attach_client; the TUI gets a RemoteController, a RunController as a local run's
SessionController is. A server started with --api-key wants the key (`--api-key`, else OPENAI_API_KEY).

Where /kvscope/v1/snapshot does not answer (a vLLM server without kvscope's plugin) but /metrics has vLLM's
metrics, attach falls back to the metrics view (kvscope.tui.metrics_app) over a MetricsFeed: /metrics every
second and, with --kv-events (and --kv-replay), vLLM's KV events. `trace --attach` needs the plugin."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from kvscope.cli.errors import UsageError
from kvscope.errors import KVScopeError

if TYPE_CHECKING:
    from textual.app import App


def _snapshot_status(url: str, api_key: str | None) -> tuple[str, int]:
    """The URL without its trailing slash, and what GET /kvscope/v1/snapshot answered (401: a UsageError)."""
    import httpx

    from kvscope.serve.client.auth_header import auth_headers

    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"URL: expected http://HOST:PORT of a `kvscope serve` or a vLLM server, got {url!r}")
    try:
        r = httpx.get(url + "/kvscope/v1/snapshot", headers=auth_headers(api_key), timeout=10)
    except httpx.HTTPError as exc:
        raise KVScopeError(f"{url}: cannot reach the server ({type(exc).__name__})") from None
    if r.status_code == 401:
        raise UsageError(f"--api-key: {url} refused the key given" if api_key else
                         f"--api-key: {url} wants an API key (the server runs with --api-key)")
    return url, r.status_code


def _check_server(url: str, api_key: str | None) -> str:
    url, status = _snapshot_status(url, api_key)
    if status != 200:
        raise KVScopeError(f"{url}: neither a kvscope server nor a vLLM server with kvscope's plugin "
                           f"(KVSCOPE_VLLM=1 VLLM_PLUGINS=kvscope vllm serve ...): /kvscope/v1/snapshot answered "
                           f"{status}")
    return url


def _has_vllm_metrics(url: str, api_key: str | None) -> str | None:
    """None when URL/metrics has vLLM's metrics, else why not (for the error line)."""
    import httpx

    from kvscope.inspector.external.vllm_metrics import has_vllm_metrics
    from kvscope.serve.client.auth_header import auth_headers
    from kvscope.serve.client.metrics_feed import get_metrics

    try:
        with httpx.Client(timeout=10, headers=auth_headers(api_key)) as client:
            scrape = get_metrics(client, url)
    except (httpx.HTTPError, ValueError) as exc:
        return f"/metrics: {exc}"
    return None if has_vllm_metrics(scrape) else "/metrics has no vllm:kv_cache_usage_perc (nor vllm:gpu_*)"


def _check_zmq_endpoint(option: str, endpoint: str | None) -> None:
    if endpoint is not None and not endpoint.startswith(("tcp://", "ipc://")):
        raise UsageError(f"{option}: expected tcp://HOST:PORT (vLLM's --kv-events-config endpoint), got {endpoint!r}")


def attach_app(url: str, *, kernels: bool = False, api_key: str | None = None, kv_events: str | None = None,
               kv_replay: str | None = None, metrics_view: bool = False, interval_s: float = 1.0) -> App[int]:
    """The TUI for the server at `url`: KVScopeApp where kvscope's snapshot answers (kvscope serve, vLLM with
    kvscope's plugin), else the MetricsApp over vLLM's /metrics (and KV events with `kv_events`)."""
    _check_zmq_endpoint("--kv-events", kv_events)
    _check_zmq_endpoint("--kv-replay", kv_replay)
    if kv_replay is not None and kv_events is None:
        raise UsageError("--kv-replay: needs --kv-events (the replay socket fills the live stream's gaps)")
    if not interval_s > 0:
        raise UsageError(f"interval: must be > 0 s, got {interval_s}")
    url, status = _snapshot_status(url, api_key)
    if status == 200 and not metrics_view:
        if kv_events is not None:
            raise UsageError("--kv-events: this server has kvscope's events (block ids, owners, steps), which the full "
                             "view shows; add --metrics-view to read vLLM's metrics and KV events instead")
        from kvscope.serve.client.attach_client import RemoteController
        from kvscope.tui.app import KVScopeApp

        return KVScopeApp(controller=RemoteController(url, kernels=kernels, api_key=api_key),
                          title=f"attached to {url}")
    why = _has_vllm_metrics(url, api_key)
    if why is not None:
        raise KVScopeError(f"{url}: neither a kvscope server (/kvscope/v1/snapshot answered {status}) nor a server "
                           f"with vLLM's metrics ({why})")
    from kvscope.serve.client.metrics_feed import MetricsFeed
    from kvscope.tui.metrics_app import MetricsApp

    feed = MetricsFeed(url, api_key=api_key, interval_s=interval_s, kv_events=kv_events, kv_replay=kv_replay)
    return MetricsApp(feed, title=f"attached to {url}")


def run_attach(url: str, **options: Any) -> int:
    """attach_app(url, **options), run until quit; an attached engine's error is raised again."""
    app = attach_app(url, **options)
    app.run()
    error = getattr(app, "exit_error", None)
    if error is not None:
        raise error
    return 0


def run_trace_attach(url: str, *, out: str | None, seconds: float, kernels: bool,
                     api_key: str | None = None) -> int:
    """Record `seconds` of a live server: the snapshot's events, then everything the server emits."""
    from kvscope.cli.commands.trace import output_folder
    from kvscope.events.bus import EventList
    from kvscope.inspector.export.chrome_trace import write_chrome_trace
    from kvscope.inspector.export.nvtxt import write_nvtxt
    from kvscope.inspector.export.recording import JsonlRecorder, make_header
    from kvscope.serve.client.attach_client import AttachStream

    if not seconds > 0:
        raise UsageError(f"--seconds: must be > 0, got {seconds}")
    url = _check_server(url, api_key)
    folder = output_folder(out if out else "trace-attach")
    events = EventList()
    stream = AttachStream(url, events, kernels=kernels, api_key=api_key)
    deadline = time.monotonic() + seconds
    stream.load_snapshot()
    device = next((e.device for e in events.events if e.kind == "run_info"), "remote")
    closer = threading.Timer(seconds + 2.0, stream.close)  # an idle server sends nothing to wake the reader
    closer.start()
    try:
        stream.follow(lambda: time.monotonic() >= deadline)
    except Exception:  # closed at the deadline, or the server went away: keep what came
        pass
    finally:
        closer.cancel()
        stream.close()
    recorder = JsonlRecorder(folder / "events.jsonl", make_header({"name": f"attach {url}"}, device))
    for ev in events.events:
        recorder(ev)
    recorder.close()
    meta = {"recipe": f"attach {url}", "device": device}
    trace = write_chrome_trace(folder / "trace.json", events.events, meta, [])
    records = write_nvtxt(folder / "trace.nvtxt", events.events, 0, "attach")
    print(f"wrote {folder / 'trace.json'} ({len(trace['traceEvents'])} trace events)\n"
          f"wrote {folder / 'trace.nvtxt'} ({records} records)\n"
          f"wrote {folder / 'events.jsonl'} ({len(events.events)} events; kvscope replay "
          f"{folder / 'events.jsonl'})")
    return 0
