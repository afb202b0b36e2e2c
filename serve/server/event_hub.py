"""The engine's events for remote viewers: a bounded, numbered ring that SSE clients read at their own pace.

EventHub is a bus subscriber (engine thread): it numbers each event (1, 2, ...), appends it to a ring of
the last `capacity` events and wakes the readers' event loops (at most one pending wake-up per reader,
so a burst of events costs one call_soon_threadsafe). A reader asks for the events after the id it last
saw (`Last-Event-ID`); one that fell further behind than the ring holds gets a gap instead, re-reads the
snapshot and resumes from the snapshot's id. The engine never waits for a reader: appending is O(1) and
a reader's backlog is the ring itself, so a slow viewer costs memory bounded by `capacity`, never time.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from kvscope.events.vocabulary import Kind

DEFAULT_CAPACITY = 20_000


@dataclass(slots=True)
class _Reader:
    loop: asyncio.AbstractEventLoop
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pending: bool = False

    def fire(self) -> None:
        self.pending = False
        self.ready.set()


@dataclass(slots=True)
class Batch:
    """What a reader gets: (id, event) pairs after its last id, or gap=True when some are gone."""

    events: list[tuple[int, Any]]
    gap: bool = False
    first_kept: int = 0


class EventHub:
    """Numbered ring of the last `capacity` events; thread-safe. Keeps the last KV snapshot for late joiners."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = max(1, capacity)
        self._events: list[Any] = []
        self._first_id = 1  # id of self._events[0]
        self._lock = threading.Lock()
        self._readers: list[_Reader] = []
        self.last_kv: Any = None

    @property
    def last_id(self) -> int:
        """Id of the newest event (0 before any)."""
        return self._first_id + len(self._events) - 1

    def __call__(self, event: Any) -> None:
        with self._lock:
            self._events.append(event)
            if len(self._events) > 2 * self.capacity:
                drop = len(self._events) - self.capacity
                del self._events[:drop]
                self._first_id += drop
            if event.kind == Kind.KV:
                self.last_kv = event
        self._wake()

    def take_all(self, events: list[Any]) -> None:
        with self._lock:
            self._events.extend(events)
            if len(self._events) > 2 * self.capacity:
                drop = len(self._events) - self.capacity
                del self._events[:drop]
                self._first_id += drop
        self._wake()

    def _wake(self) -> None:
        for reader in self._readers:
            if not reader.pending:
                reader.pending = True
                try:
                    reader.loop.call_soon_threadsafe(reader.fire)
                except RuntimeError:  # its loop is closed
                    pass

    def read_after(self, last_id: int, limit: int = 1000) -> Batch:
        """Events with ids after `last_id` (at most `limit`), or a gap when the oldest of them is gone."""
        with self._lock:
            oldest = max(self._first_id, self.last_id - self.capacity + 1)
            if last_id + 1 < oldest:
                return Batch([], gap=True, first_kept=oldest)
            start = last_id + 1 - self._first_id
            chunk = self._events[start:start + limit]
        return Batch([(last_id + 1 + i, ev) for i, ev in enumerate(chunk)])

    # --- readers (event loop side) --------------------------------------------------------------
    def add_reader(self) -> _Reader:
        reader = _Reader(asyncio.get_running_loop())
        with self._lock:
            self._readers = [*self._readers, reader]
        return reader

    def remove_reader(self, reader: _Reader) -> None:
        with self._lock:
            self._readers = [r for r in self._readers if r is not reader]
