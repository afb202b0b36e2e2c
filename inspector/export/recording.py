"""JSONL recordings of event streams: a writer that subscribes to the bus, a reader for replay.

File layout: line 1 is a header object
    {"schema": 2, "kvscope": "0.1.0", "recipe": {...} | "path", "device": "cpu", "created": "<iso time>"}
(and "recipe_path" when the recipe came from a file)
then one event a line, as kvscope.events.event_to_dict writes it (kind first). A recording of an older
schema (SUPPORTED_SCHEMAS) replays: its events' fields are read by their new names (kvscope.events.codec).

The writer formats each record with a per-class encoder generated from the field types (one
%-format of the fields: no dataclasses.asdict, no json.dumps of a dict) and writes each step's
events at the step's end, in one system call, so recording stays cheap on the hot path and a
killed run keeps every finished step.

The reader is strict by default: the first bad line raises RecordingError naming
"<file>:<line>: <what>" (lines are decoded one by one, so that is the damaged line), and so does
an event out of place in the stream (kvscope.inspector.stream_check: a duplicated block of
events, a step that ends twice, a request that arrives twice). With strict=False it stops at the
damage and returns what came before it, with the message in `Recording.damage` (a truncated
recording still replays).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, cast

from kvscope.errors import KVScopeError
from kvscope.events.bus import EventBus
from kvscope.events.codec import RENAMED, SCHEMA_VERSION, EventDecodeError, event_from_dict
from kvscope.events.records import EVENT_TYPES, Event
from kvscope.events.vocabulary import Kind
from kvscope.inspector.stream_check import StreamCheck

STEP_END = Kind.STEP_END

HEADER_KEYS = ("schema", "kvscope", "recipe", "device", "created")
SUPPORTED_SCHEMAS = (*RENAMED, SCHEMA_VERSION)


class RecordingError(KVScopeError):
    """A recording that cannot be read: "<file>:<line>: <what>"."""


def make_header(recipe: Any, device: str, version: str | None = None, *,
                recipe_path: str | None = None) -> dict[str, Any]:
    """The header line for a recording of a run of `recipe` (a dict or a path) on `device`; `recipe_path`,
    when given, names the file the recipe came from."""
    if version is None:
        from kvscope.version import __version__ as version
    header = {
        "schema": SCHEMA_VERSION,
        "kvscope": version,
        "recipe": recipe,
        "device": device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if recipe_path is not None:
        header["recipe_path"] = recipe_path
    return header


class _Quoted(dict):
    """str -> its JSON literal, made once per string (op names, backends, reasons and shapes repeat); a
    subscript, so a cached string costs no Python call."""

    def __missing__(self, value: str) -> str:
        quoted = json.dumps(value)
        if len(self) < 4096:
            self[value] = quoted
        return quoted


def _int_pairs(value: tuple) -> str:
    return "[" + ", ".join(["[%d, %d]" % pair for pair in value]) + "]"


def _named_spans(value: tuple, quoted: _Quoted) -> str:
    return "[" + ", ".join(["[%s, %d, %d]" % (quoted[name], a, b) for name, a, b in value]) + "]"


# field type (as the dataclass annotation reads) -> (placeholder, expression of the value `e.<name>`)
_FIELD_CODE = {
    "int": ("%d", "e.{}"),
    "str": ("%s", "Q[e.{}]"),
    "bool": ("%s", "('true' if e.{} else 'false')"),
    "tuple[int, ...]": ("[%s]", "', '.join(map(str, e.{}))"),
    "tuple[tuple[int, int], ...]": ("%s", "pairs(e.{})"),
    "tuple[tuple[str, int, int], ...]": ("%s", "spans(e.{}, Q)"),
}


def _encoder_for(cls: type[Event]) -> Callable[[Any], str]:
    """A fast line encoder for one event class, generated from its field types: one %-format of the
    fields (ints through %d, strings quoted once and cached, int tuples joined), no dict and no json.dumps
    of the record. A value of an unexpected type falls back to json.dumps of the whole record."""
    dumps = json.dumps
    names = [f.name for f in fields(cls)]
    template = ['{"kind": ' + dumps(cls.kind)]
    values = []
    for f in fields(cls):
        placeholder, expr = _FIELD_CODE.get(str(f.type), ("%s", "dumps(e.{})"))
        template.append(f", {dumps(f.name)}: {placeholder}")
        values.append(expr.format(f.name))

    def fallback(e: Any) -> str:
        return dumps({"kind": cls.kind, **{n: getattr(e, n) for n in names}}) + "\n"

    env = {"FMT": "".join(template) + "}\n", "Q": _Quoted(), "pairs": _int_pairs, "spans": _named_spans,
           "dumps": dumps, "fallback": fallback}
    source = ("def encode(e):\n    try:\n        return FMT % (" + ", ".join(values) + ",)\n"
              "    except (TypeError, ValueError):\n        return fallback(e)\n")
    exec(source, env)
    return cast("Callable[[Any], str]", env["encode"])  # the `encode` the source above defines


ENCODERS: dict[str, Callable[[Any], str]] = {kind: _encoder_for(cls) for kind, cls in EVENT_TYPES.items()}


def encode_event(event: Any) -> str:
    """One JSONL line (with its newline) for an event."""
    return ENCODERS[event.kind](event)


class JsonlRecorder:
    """A bus subscriber that appends every event to a JSONL file (header written on open).

    Events are held as they come and encoded and written at each step's end (a killed run loses at
    most the step in progress) or every `flush_every` events, in one unbuffered write: encoding them
    in one loop, with the code warm, is much cheaper than one at a time between two kernels. A step's kernel events
    (take_all) are encoded at once, while they are still in the CPU's caches. Events are immutable
    once emitted. Thread-safe: one lock around holding and writing (the TUI closes the recorder
    from its own thread while the engine's may still emit)."""

    __slots__ = ("_file", "_flush_every", "_held", "_lock", "_pending", "count", "path")

    def __init__(self, path: str | Path, header: dict[str, Any], flush_every: int = 512) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] | None = open(self.path, "wb", buffering=0)  # a write is one system call
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot write recording: {exc.strerror or exc}") from None
        self._file.write((json.dumps(header) + "\n").encode())
        self._pending: list[Any] = []  # events, and lines already encoded
        self._held = 0  # events in _pending
        self._flush_every = flush_every
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, event: Any) -> None:
        with self._lock:
            self._pending.append(event)
            self._held += 1
            if event.kind == STEP_END or self._held >= self._flush_every:
                self._write()

    def take_all(self, events: list[Any]) -> None:
        encoders = ENCODERS
        lines = "".join([encoders[e.kind](e) for e in events])
        with self._lock:
            self._pending.append(lines)
            self._held += len(events)

    def flush(self) -> None:
        """Encode and write the events held so far."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        if self._file is not None and self._pending:
            encoders = ENCODERS
            self._file.write("".join([e if type(e) is str else encoders[e.kind](e) for e in self._pending]).encode())
            self.count += self._held
            self._pending, self._held = [], 0

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._write()
                self._file.close()
                self._file = None


def attach_recorder(bus: EventBus, path: str | Path, header: dict[str, Any]) -> Callable[[], None]:
    """Record everything on `bus` to `path`; returns a closer that unsubscribes and flushes."""
    recorder = JsonlRecorder(path, header)
    bus.subscribe(recorder)

    def close() -> None:
        bus.unsubscribe(recorder)
        recorder.close()

    return close


@dataclass
class Recording:
    """A read recording: the header, the events in order, and where it was damaged (if it was)."""

    path: str
    header: dict[str, Any]
    events: list[Any] = field(default_factory=list)
    damage: str | None = None


def iter_recording(path: str | Path, strict: bool = True) -> Iterator[Any]:
    """Yield the header dict first, then each event. A bad line raises RecordingError (strict)
    or ends the iteration after yielding a final RecordingError instance (not raised). Strict, an
    event out of place in the stream (kvscope.inspector.stream_check) is an error too.

    Lines are decoded one by one, so damage is reported at the line that holds it."""
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise RecordingError(f"{p}: cannot read recording: {exc.strerror or exc}") from None
    check = StreamCheck() if strict else None
    with f:
        first = f.readline()
        if not first:
            raise RecordingError(f"{p}:1: empty file, expected a kvscope recording header")
        try:
            header_line = first.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordingError(f"{p}:1: not UTF-8 text; not a kvscope recording") from None
        header = _parse_header(p, header_line)
        yield header
        for lineno, raw in enumerate(f, 2):
            try:
                event = _parse_event(raw, header["schema"])
                problem = check.problem(event) if check is not None and event is not None else None
                if problem is not None:
                    raise ValueError(problem)
            except (ValueError, EventDecodeError) as exc:
                err = RecordingError(f"{p}:{lineno}: {exc}")
                if strict:
                    raise err from None
                yield err
                return
            if event is not None:
                yield event


def _parse_event(raw: bytes, schema: int) -> Any:
    """The event on one line (None for a blank line); ValueError / EventDecodeError saying what is wrong."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not line.strip():
        return None
    if not line.endswith("\n"):
        raise ValueError("truncated line (no newline at the end of the file)")
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    return event_from_dict(data, schema)


def _parse_header(p: Path, line: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{p}:1: header is not JSON ({exc.msg}); not a kvscope recording") from None
    if not isinstance(header, dict) or "schema" not in header:
        raise RecordingError(f"{p}:1: header has no 'schema' field; not a kvscope recording")
    if header["schema"] not in SUPPORTED_SCHEMAS:
        raise RecordingError(f"{p}:1: schema {header['schema']!r} is not supported (this kvscope reads "
                             f"schema {', '.join(map(str, SUPPORTED_SCHEMAS))})")
    return header


def read_recording(path: str | Path, strict: bool = True) -> Recording:
    """Read a whole recording. strict=False: stop at the first damaged line, noting it in `.damage`."""
    it = iter_recording(path, strict)
    header = next(it)
    rec = Recording(str(path), header)
    for item in it:
        if isinstance(item, RecordingError):
            rec.damage = str(item)
            break
        rec.events.append(item)
    return rec
