"""Events as JSON objects and back (recordings, the server's event stream): the kind first, tuples as lists."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from kvscope.events.records import EVENT_TYPES

SCHEMA_VERSION = 1


def event_to_dict(event: Any) -> dict[str, Any]:
    """A JSON-ready dict with the event's kind first; tuples become lists."""
    d = {"kind": event.kind}
    d.update(asdict(event))
    return d


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


class EventDecodeError(ValueError):
    """A record that does not describe a known event."""


def event_from_dict(d: dict[str, Any]) -> Any:
    """Inverse of event_to_dict. Raises EventDecodeError naming what is wrong."""
    if not isinstance(d, dict):
        raise EventDecodeError(f"expected an object, got {type(d).__name__}")
    kind = d.get("kind")
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise EventDecodeError(f"unknown event kind {kind!r}")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names - {"kind"}
    if unknown:
        raise EventDecodeError(f"{kind}: unknown field(s) {sorted(unknown)}")
    try:
        return cls(**{k: _as_tuple(v) for k, v in d.items() if k != "kind"})
    except TypeError as exc:
        raise EventDecodeError(f"{kind}: {exc}") from None
