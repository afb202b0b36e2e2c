"""`kvscope attach URL` (the TUI on a running `kvscope serve`) and `kvscope trace --attach URL` (a live
server's timeline for S seconds). Both read the server's snapshot and event stream through
kvscope.serve.client.attach_client; the TUI gets a RemoteController, a RunController as a local run's
SessionController is. A server started with --api-key wants the key (`--api-key`, else OPENAI_API_KEY)."""

from __future__ import annotations

import threading
import time

from kvscope.cli.errors import UsageError
from kvscope.errors import KVScopeError


def _check_server(url: str, api_key: str | None) -> str:
    import httpx

    from kvscope.serve.client.auth_header import auth_headers

    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"URL: expected http://HOST:PORT of a `kvscope serve` or a vLLM server with kvscope's "
                         f"plugin, got {url!r}")
    try:
        r = httpx.get(url + "/kvscope/v1/snapshot", headers=auth_headers(api_key), timeout=10)
    except httpx.HTTPError as exc:
        raise KVScopeError(f"{url}: cannot reach the server ({type(exc).__name__})") from None
    if r.status_code == 401:
        raise UsageError(f"--api-key: {url} refused the key given" if api_key else
                         f"--api-key: {url} wants an API key (the server runs with --api-key)")
    if r.status_code != 200:
        raise KVScopeError(f"{url}: neither a kvscope server nor a vLLM server with kvscope's plugin "
                           f"(KVSCOPE_VLLM=1 VLLM_PLUGINS=kvscope vllm serve ...): /kvscope/v1/snapshot answered "
                           f"{r.status_code}")
    return url


def run_attach(url: str, *, kernels: bool = False, api_key: str | None = None) -> int:
    from kvscope.serve.client.attach_client import RemoteController
    from kvscope.tui.app import KVScopeApp

    url = _check_server(url, api_key)
    app = KVScopeApp(controller=RemoteController(url, kernels=kernels, api_key=api_key),
                     title=f"attached to {url}")
    app.run()
    if app.exit_error is not None:
        raise app.exit_error
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
