"""Events as JSON objects and back (recordings, the server's event stream): the kind first, tuples as lists.

SCHEMA_VERSION is the field names' version (a recording's header says which it was written with). Schema 2
names every field that holds a config value as the config does (RunInfo num_heads, num_kv_heads, num_blocks,
max_num_batched_tokens; StepEnd max_num_batched_tokens; KVSnapshot num_blocks); an event of an older schema is
read with its fields renamed (RENAMED).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from kvscope.events.records import EVENT_TYPES

SCHEMA_VERSION = 2
# schema -> kind -> {old field name: the next schema's name}
RENAMED: dict[int, dict[str, dict[str, str]]] = {
    1: {"run_info": {"n_heads": "num_heads", "n_kv_heads": "num_kv_heads", "total_blocks": "num_blocks",
                     "token_budget": "max_num_batched_tokens"},
        "step_end": {"token_budget": "max_num_batched_tokens"},
        "kv": {"total_blocks": "num_blocks"}},
}


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


def event_from_dict(d: dict[str, Any], schema: int = SCHEMA_VERSION) -> Any:
    """Inverse of event_to_dict, for a record written with `schema`'s field names. Raises EventDecodeError naming
    what is wrong."""
    if not isinstance(d, dict):
        raise EventDecodeError(f"expected an object, got {type(d).__name__}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise EventDecodeError(f"unknown event kind {kind!r}")
    cls = EVENT_TYPES[kind]
    for version in range(schema, SCHEMA_VERSION):
        renamed = RENAMED[version].get(kind, {})
        d = {renamed.get(k, k): v for k, v in d.items()}
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names - {"kind"}
    if unknown:
        raise EventDecodeError(f"{kind}: unknown field(s) {sorted(unknown)}")
    try:
        return cls(**{k: _as_tuple(v) for k, v in d.items() if k != "kind"})
    except TypeError as exc:
        raise EventDecodeError(f"{kind}: {exc}") from None
