"""The client side of attach: a server's events as if the engine ran here.

AttachStream reads /kvscope/v1/snapshot (the events that rebuild the present state), then follows
/kvscope/v1/events from the snapshot's id, handing every event, decoded, to a sink. After a `gap` (it fell
behind the server's ring) or a dropped connection it re-reads the snapshot: the snapshot starts with a
RunInfo, which resets a fold (EngineView, the TUI's model), so the state is whole again.

RemoteController is a RunController (kvscope.inspector.live.controller), as the in-process SessionController
is: the TUI drains its events and its pause / step / delay keys become POST /kvscope/v1/control. A server
never finishes and cannot restart its workload: `finished` stays False and `restart` does nothing.

Both send `api_key` (a server's --api-key) as `Authorization: Bearer ...` on every request (auth_headers).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from kvscope.events.codec import EventDecodeError, event_from_dict
from kvscope.inspector.live.controller import drain_queue, run_state
from kvscope.serve.client.auth_header import auth_headers

Sink = Callable[[Any], None]


def sse_records(lines: Iterator[str]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event name, data) per SSE record (the id is None when the record sets none; data "" for a comment)."""
    rid: str | None = None
    name, seen = "message", False
    data: list[str] = []
    for line in lines:
        if not line:
            if seen:  # a comment-only record (a heartbeat) comes out too, with no data: a reader can look up
                yield rid, name, "\n".join(data)
            rid, name, data, seen = None, "message", [], False
            continue
        seen = True
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            rid = value
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)


class AttachStream:
    """Snapshot, then events, into `sink`, until `should_stop()`; `last_id` is the last event applied."""

    def __init__(self, url: str, sink: Sink, kernels: bool = False, timeout_s: float = 10.0,
                 api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.sink = sink
        self.kernels = kernels
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s, read=None), headers=auth_headers(api_key))
        self.last_id = 0
        self.gaps = 0
        self.controls: dict[str, Any] = {}

    def load_snapshot(self) -> None:
        r = self.client.get(self.url + "/kvscope/v1/snapshot")
        r.raise_for_status()
        body = r.json()
        for d in body["events"]:
            self.sink(event_from_dict(d))
        self.last_id = body["last_event_id"]
        self.controls = body.get("controls", {})

    def follow(self, should_stop: Callable[[], bool]) -> None:
        """Events after last_id until should_stop() (checked at each record and heartbeat); a gap re-reads
        the snapshot and goes on."""
        params = {"kernels": "1"} if self.kernels else {}
        while not should_stop():
            headers = {"Last-Event-ID": str(self.last_id)}
            with self.client.stream("GET", self.url + "/kvscope/v1/events", headers=headers,
                                    params=params) as r:
                r.raise_for_status()
                gap = False
                for rid, name, data in sse_records(r.iter_lines()):
                    if name == "gap":
                        gap = True
                        break
                    if data:
                        try:
                            self.sink(event_from_dict(json.loads(data)))
                        except (ValueError, EventDecodeError):
                            pass  # an event of a newer server: skip it
                    if rid is not None:
                        self.last_id = int(rid)
                    if should_stop():
                        return
            if gap:
                self.gaps += 1
                self.load_snapshot()

    def close(self) -> None:
        self.client.close()


class RemoteController:
    """A RunController over a server (see module docstring); safe from any thread."""

    def __init__(self, url: str, *, kernels: bool = False, retries: int = 5, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._headers = auth_headers(api_key)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._stream = AttachStream(self.url, self._events.put, kernels=kernels, api_key=api_key)
        self._stop = False
        self._retries = retries
        self.error: BaseException | None = None
        self.session: Any = None  # the URL once attached (the TUI checks it, like a loaded session)
        self._paused = False
        self.delay_s = 0.0
        self.steps_run = 0
        self._thread = threading.Thread(target=self._run, name="kvscope-attach", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> RemoteController:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop = True
        self._stream.close()  # unblocks a read in progress
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop:
            try:
                self._stream.load_snapshot()
                self._apply_controls(self._stream.controls)
                self.session = self.url
                self._stream.follow(lambda: self._stop)
            except Exception as exc:  # the server went away: try again a few times, then say so
                if self._stop:
                    return
                failures += 1
                if failures > self._retries:
                    self.error = ConnectionError(f"{self.url}: {type(exc).__name__}: {exc}")
                    return
                time.sleep(min(0.2 * 2**failures, 3.0))

    # -- controls -----------------------------------------------------------------------------
    def _control(self, action: str, **extra: Any) -> dict[str, Any] | None:
        try:
            r = httpx.post(self.url + "/kvscope/v1/control", json={"action": action, **extra}, headers=self._headers,
                           timeout=5)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        body = r.json()
        self._apply_controls(body)
        return body

    def _apply_controls(self, body: dict[str, Any]) -> None:
        self._paused = bool(body.get("paused", self._paused))
        self.delay_s = float(body.get("delay_s", self.delay_s))
        self.steps_run = int(body.get("steps", self.steps_run))

    def pause(self) -> None:
        self._control("pause")

    def resume(self) -> None:
        self._control("resume")

    def toggle_pause(self) -> bool:
        self._control("resume" if self._paused else "pause")
        return self._paused

    def step_once(self) -> bool:
        return self._control("step") is not None

    def restart(self) -> None:
        """A server's workload comes from its clients: nothing to restart."""

    def set_delay(self, seconds: float) -> None:
        self._control("delay", seconds=max(0.0, float(seconds)))

    # -- state --------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def finished(self) -> bool:
        return False

    @property
    def state(self) -> str:
        return run_state(failed=self.error is not None, stopped=self._stop, paused=self._paused,
                         loaded=self.session is not None)

    @property
    def idle(self) -> bool:
        return self._paused or self.error is not None

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.idle:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def drain(self, sink: Sink, limit: int | None = None) -> int:
        """Apply queued events, oldest first, to `sink` on the calling thread; returns how many."""
        return drain_queue(self._events, sink, limit)
