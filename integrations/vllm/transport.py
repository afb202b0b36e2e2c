"""The events' way from vLLM's engine core to its API server: a Unix socket, one event per line as a recording
writes it (kvscope.inspector.export.recording.encode_event, the fast encoder).

EventRelay lives in the API process (the first process that loads the plugin): it listens on a socket path
it puts in the environment (KVSCOPE_VLLM_SOCKET) before vLLM starts its engine core, so the core (a child
process) inherits it. Every event it gets is folded into an EngineView (what a late joiner's snapshot is
built from) and appended to an EventHub (the ring the SSE readers read), under one lock so the two agree.
Where the engine core runs in the API process itself (vLLM's multiprocessing off), events reach the relay
by a direct call.

SocketSink lives in the engine core: vLLM's engine thread only appends to a bounded queue; a daemon thread
wakes every 20 ms and writes what is queued in one go, connecting (retrying) when the relay is up. A full
queue drops the oldest events and the relay is told by a `gap` record, so vLLM never waits on kvscope.
The socket is made readable by this user only.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import tempfile
import threading
import time
from typing import Any

from kvscope.events.codec import event_from_dict
from kvscope.events.vocabulary import Kind
from kvscope.inspector.export.recording import encode_event
from kvscope.inspector.state import EngineView
from kvscope.serve.server.event_hub import EventHub

SOCKET_ENV = "KVSCOPE_VLLM_SOCKET"
QUEUE_LIMIT = 200_000  # events queued in the engine core before the oldest are dropped
FLUSH_EVERY_S = 0.02   # how often the engine core's sender wakes (at most 50 writes a second)
PENDING_LIMIT_BYTES = 64 << 20  # what the sender keeps for a relay that is not up before it gives it up


class EventRelay:
    """The API side: receives the core's events, keeps the view and the ring. `feed(event)` is thread-safe."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.path.join(tempfile.gettempdir(), f"kvscope-vllm-{os.getpid()}.sock")
        self.hub = EventHub()
        self.view = EngineView()
        self.lock = threading.Lock()
        self.gaps = 0
        self.open_step: Any = None  # the StepBegin of a step that has not ended yet (a snapshot may fall inside one)
        self._server: socket.socket | None = None

    def feed(self, event: Any) -> None:
        self.feed_all([event])

    def feed_all(self, events: list[Any]) -> None:
        with self.lock:
            for event in events:
                self.view.apply(event)
                self.hub(event)
                if event.kind == Kind.STEP_BEGIN:
                    self.open_step = event
                elif event.kind == Kind.STEP_END:
                    self.open_step = None

    def listen(self) -> EventRelay:
        """Bind the socket and accept engine cores in a daemon thread; export the path to child processes."""
        if os.path.exists(self.path):
            os.unlink(self.path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        os.chmod(self.path, 0o600)
        server.listen(4)
        self._server = server
        os.environ[SOCKET_ENV] = self.path
        threading.Thread(target=self._accept, name="kvscope-relay", daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), name="kvscope-relay-conn", daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        """Whatever arrives, split into lines; each write's events folded under one lock."""
        rest = b""
        with conn:
            while chunk := conn.recv(1 << 20):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                events = []
                for line in lines:
                    record = json.loads(line)
                    if record.get("kind") == "gap":
                        self.gaps += 1
                    else:
                        events.append(event_from_dict(record))
                self.feed_all(events)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            if os.path.exists(self.path):
                os.unlink(self.path)


class SocketSink:
    """The engine-core side: `sink(event)` only appends to a bounded queue (no lock, no wake-up: vLLM's engine
    thread never hands the GIL to kvscope for an event); a daemon thread wakes every FLUSH_EVERY_S, takes what
    is queued and sends it in one write, connecting (and reconnecting) when the relay is up."""

    def __init__(self, path: str, flush_every_s: float = FLUSH_EVERY_S) -> None:
        self.path, self.flush_every_s = path, flush_every_s
        self.queue: collections.deque[Any] = collections.deque()
        self.dropped = 0
        threading.Thread(target=self._send, name="kvscope-sink", daemon=True).start()

    def __call__(self, event: Any) -> None:
        queue = self.queue
        if len(queue) >= QUEUE_LIMIT:
            queue.popleft()
            self.dropped += 1
        queue.append(event)

    def _take(self) -> bytes:
        queue, batch = self.queue, []
        while queue:
            batch.append(queue.popleft())
        dropped, self.dropped = self.dropped, 0
        gap = json.dumps({"kind": "gap", "dropped": dropped}) + "\n" if dropped else ""
        return (gap + "".join(encode_event(e) for e in batch)).encode() if batch or gap else b""

    def _send(self) -> None:
        conn: socket.socket | None = None
        pending = b""
        while True:
            time.sleep(self.flush_every_s)
            pending += self._take()
            if not pending:
                continue
            try:
                if conn is None:
                    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    conn.connect(self.path)
                conn.sendall(pending)
                pending = b""
            except OSError:  # the relay is not up (yet): keep what is pending, bounded, and retry
                if conn is not None:
                    conn.close()
                conn = None
                if len(pending) > PENDING_LIMIT_BYTES:
                    pending = b""
