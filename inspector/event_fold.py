"""EventFold: the base of every consumer that folds the event stream into something (the EngineView,
the Metrics, the step history, the Chrome trace and NVTXT builders).

A subclass defines `on_<kind>(self, event)` for the kinds it cares about (Kind.STEP_END ->
`on_step_end`, ...). Calling the fold with an event runs that handler; the kind -> handler table is
built once per class, so an event of a kind the consumer ignores costs one dict miss. `take_all(events)`
folds many events in one call (EventBus.emit_all hands a step's kernel events over that way), and
`fan_out(*folds)` lets one consumer feed several folds with one lookup per event. Pure python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from kvscope.events.records import EVENT_TYPES

Handler = Callable[[Any, Any], None]


class EventFold:
    """A bus subscriber (`fold(event)`) that dispatches each event to its `on_<kind>` handler."""

    __slots__ = ()
    _handlers: ClassVar[dict[str, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {kind: getattr(cls, f"on_{kind}") for kind in EVENT_TYPES if hasattr(cls, f"on_{kind}")}

    def __call__(self, event: Any) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(self, event)

    def take_all(self, events: Iterable[Any]) -> None:
        """Fold several events in order (the bus hands a step's kernel events over this way; exporters
        fold a whole recording)."""
        handlers = self._handlers
        for event in events:
            handler = handlers.get(event.kind)
            if handler is not None:
                handler(self, event)


def fan_out(*folds: EventFold) -> dict[str, tuple[tuple[Handler, EventFold], ...]]:
    """kind -> the (handler, fold) pairs of the folds that handle it, in order: one lookup per event
    for a consumer that feeds several folds (the TUI's model) instead of one per fold."""
    return {kind: pairs for kind in EVENT_TYPES
            if (pairs := tuple((fold._handlers[kind], fold) for fold in folds if kind in fold._handlers))}
