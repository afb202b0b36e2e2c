"""The event bus: fan-out of events to subscribers, and the clock that stamps them.

With no subscriber, emitting costs one attribute check at the call site:

    if bus.active:
        bus.emit(BlockEvent(...))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

now_ns = time.perf_counter_ns


Subscriber = Callable[[Any], None]
S = TypeVar("S", bound=Subscriber)


@dataclass(slots=True)
class EventBus:
    """Fan-out of events to subscribers. `active` is the one check callers make before building an event.
    `clock` stamps the engine's events: the monotonic clock, or a simulated device's virtual one."""

    subscribers: list[Subscriber] = field(default_factory=list)
    active: bool = False
    clock: Callable[[], int] = now_ns

    def subscribe(self, fn: S) -> S:
        """Add `fn`; returns it, as it was given (`metrics = bus.subscribe(Metrics())`)."""
        self.subscribers.append(fn)
        self.active = True
        return fn

    def unsubscribe(self, fn: Subscriber) -> None:
        if fn in self.subscribers:
            self.subscribers.remove(fn)
        self.active = bool(self.subscribers)

    def emit(self, event: Any) -> None:
        for fn in self.subscribers:
            fn(event)

    def emit_all(self, events: list[Any]) -> None:
        """Emit several events (a step's kernel events) in order; a subscriber with a `take_all(events)`
        method gets them in one call."""
        for fn in self.subscribers:
            take_all = getattr(fn, "take_all", None)
            if take_all is not None:
                take_all(events)
            else:
                for event in events:
                    fn(event)


class EventList:
    """A subscriber that keeps every event in memory (tests, trace export)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def take_all(self, events: list[Any]) -> None:
        self.events.extend(events)
