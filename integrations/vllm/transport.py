"""The events' way from vLLM's engine core to its API server: a Unix socket, one event per line as a recording
writes it (kvscope.inspector.export.recording.encode_event, the fast encoder).

EventRelay lives in the API process (the first process that loads the plugin): it listens on a socket path
it puts in the environment (KVSCOPE_VLLM_SOCKET) before vLLM starts its engine core, so the core (a child
process) inherits it. Every event it gets is folded into an EngineView (what a late joiner's snapshot is
built from) and appended to an EventHub (the ring the SSE readers read), under one lock so the two agree.
Where the engine core runs in the API process itself (vLLM's multiprocessing off), events reach the relay
by a direct call.

SocketSink lives in the engine core: vLLM's engine thread only appends to a bounded queue; a daemon thread
connects (retrying) and writes. A full queue drops the oldest events and the relay is told by a `gap`
record, so vLLM never waits on kvscope. The socket is made readable by this user only.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import tempfile
import threading
from typing import Any

from kvscope.events.codec import event_from_dict
from kvscope.events.vocabulary import Kind
from kvscope.inspector.export.recording import encode_event
from kvscope.inspector.state import EngineView
from kvscope.serve.server.event_hub import EventHub

SOCKET_ENV = "KVSCOPE_VLLM_SOCKET"
QUEUE_LIMIT = 200_000


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
        with self.lock:
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
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                record = json.loads(line)
                if record.get("kind") == "gap":
                    self.gaps += 1
                    continue
                self.feed(event_from_dict(record))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            if os.path.exists(self.path):
                os.unlink(self.path)


class SocketSink:
    """The engine-core side: `sink(event)` queues; a daemon thread sends, connecting when the relay is up."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queue: collections.deque[Any] = collections.deque()
        self.ready = threading.Condition()
        self.dropped = 0
        threading.Thread(target=self._send, name="kvscope-sink", daemon=True).start()

    def __call__(self, event: Any) -> None:
        with self.ready:
            if len(self.queue) >= QUEUE_LIMIT:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(event)
            self.ready.notify()

    def _send(self) -> None:
        conn: socket.socket | None = None
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                batch = list(self.queue)
                self.queue.clear()
                dropped, self.dropped = self.dropped, 0
            gap = json.dumps({"kind": "gap", "dropped": dropped}) + "\n" if dropped else ""
            payload = (gap + "".join(encode_event(e) for e in batch)).encode()
            while True:
                try:
                    if conn is None:
                        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        conn.connect(self.path)
                    conn.sendall(payload)
                    break
                except OSError:
                    if conn is not None:
                        conn.close()
                    conn = None
                    threading.Event().wait(0.2)
