"""JSONL recordings: the fast writer agrees with the contract's event_to_dict, a recording reads
back to equal events, and damage is reported as "<file>:<line>: <what>" (strict) or replayed up to."""

from __future__ import annotations

import json

import pytest

from kvscope.errors import KVScopeError
from kvscope.events.bus import EventBus
from kvscope.events.codec import event_to_dict
from kvscope.events.records import BlockEvent, KernelEvent, KVSnapshot, RequestEvent, RunInfo, StepBegin, StepEnd
from kvscope.inspector.export.recording import (
    JsonlRecorder,
    RecordingError,
    attach_recorder,
    encode_event,
    make_header,
    read_recording,
)


def sample_events() -> list:
    return [
        RunInfo(1, -1, 'model "quoted"', 2, 4, 2, 8, 32, "float32", "cpu", "torch", "continuous", 16, 4, 512,
                64, 8, 256, True),
        RequestEvent(2, -1, 0, "arrived", 12, 0, 0, 8),
        StepBegin(3, 0),
        BlockEvent(4, 0, "alloc", 0, (3, 4, 5), 0, (1, 1, 1), (0, 0, 0)),
        BlockEvent(5, 0, "cached", 0, (3,), 0, (1,), (2**61 + 7,)),
        KernelEvent(9, 0, "attention", 1, "torch", 6, 8, "T=12 H=4 ünïcode", 1234, 5678),
        KVSnapshot(10, 0, 16, 4, 3, 0, 13, 12, 0, 244),
        RequestEvent(11, 0, 0, "finished", 12, 8, 19, 8, "length"),
        StepEnd(12, 0, 3, 12, 512, ((0, 12),), (), ((0, 1),), (("schedule", 3, 4), ("forward", 5, 9)), 1, 0, 0),
    ]


def write(path, events, header=None) -> None:
    rec = JsonlRecorder(path, header or make_header({"name": "t"}, "cpu"), flush_every=3)
    for e in events:
        rec(e)
    rec.close()


def test_fast_encoder_matches_event_to_dict():
    for e in sample_events():
        line = encode_event(e)
        assert line.endswith("\n") and "\n" not in line[:-1]
        assert json.loads(line) == json.loads(json.dumps(event_to_dict(e)))


def test_round_trip_gives_equal_events(tmp_path):
    path = tmp_path / "events.jsonl"
    write(path, sample_events())
    rec = read_recording(path)
    assert rec.damage is None
    assert rec.events == sample_events()
    assert rec.header["schema"] == 2 and rec.header["recipe"] == {"name": "t"} and rec.header["device"] == "cpu"
    assert set(rec.header) == {"schema", "kvscope", "recipe", "device", "created"}


def test_a_schema_1_recording_replays_with_the_new_field_names(tmp_path):
    """Schema 1 named the config's values its own way (n_heads, total_blocks, token_budget): read by today's names."""
    schema_1 = {"num_heads": "n_heads", "num_kv_heads": "n_kv_heads", "num_blocks": "total_blocks",
                "max_num_batched_tokens": "token_budget"}  # today's name -> schema 1's
    lines = [json.dumps({"schema": 1, "kvscope": "0.1.0", "recipe": {"name": "t"}, "device": "cpu", "created": ""})]
    lines += [json.dumps({schema_1.get(k, k): v for k, v in event_to_dict(e).items()}) for e in sample_events()]
    assert '"n_kv_heads": 2' in lines[1] and '"total_blocks": 16' in lines[7] and '"token_budget": 512' in lines[-1]
    path = tmp_path / "old.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rec = read_recording(path)
    assert rec.damage is None and rec.header["schema"] == 1 and rec.events == sample_events()
    assert rec.events[0].num_kv_heads == 2 and rec.events[-1].max_num_batched_tokens == 512


def test_attach_recorder_writes_while_subscribed_and_closes(tmp_path):
    path = tmp_path / "sub" / "run.jsonl"
    bus = EventBus()
    close = attach_recorder(bus, path, make_header("recipes/x.yaml", "cpu"))
    assert bus.active
    for e in sample_events():
        bus.emit(e)
    close()
    assert not bus.active
    bus.emit(StepBegin(99, 5))  # after closing: not recorded, no error
    assert len(path.read_text().splitlines()) == 1 + len(sample_events())
    assert read_recording(path).header["recipe"] == "recipes/x.yaml"


def damaged(tmp_path, mutate) -> tuple:
    path = tmp_path / "events.jsonl"
    write(path, sample_events())
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(mutate(lines)))
    return path


@pytest.mark.parametrize("mutate, line, what", [
    (lambda ls: ls[:-1] + [ls[-1][:25]], 10, "truncated line"),
    (lambda ls: ls[:4] + ['{"kind": "step_begin", "ts": 1,\n'] + ls[5:], 5, "invalid JSON"),
    (lambda ls: ls[:3] + ['{"kind": "warp", "ts": 1, "step": 0}\n'] + ls[4:], 4, "unknown event kind 'warp'"),
    (lambda ls: ls[:3] + ['{"kind": "step_begin", "ts": 1, "step": 0, "x": 2}\n'] + ls[4:], 4, "unknown field"),
    (lambda ls: ls[:3] + ['[1, 2]\n'] + ls[4:], 4, "expected an object"),
])
def test_damage_is_named_by_file_and_line(tmp_path, mutate, line, what):
    path = damaged(tmp_path, mutate)
    with pytest.raises(RecordingError) as info:
        read_recording(path, strict=True)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ") and what in message and "\n" not in message
    lenient = read_recording(path, strict=False)
    assert lenient.events == sample_events()[: line - 2]  # everything before the damaged line
    assert lenient.damage == message


@pytest.mark.parametrize("first, what", [
    ("not json\n", "header is not JSON"),
    ('{"kind": "step_begin"}\n', "no 'schema' field"),
    ('{"schema": 99}\n', "schema 99 is not supported"),
    ("", "empty file"),
])
def test_bad_header_is_an_error_in_both_modes(tmp_path, first, what):
    path = tmp_path / "bad.jsonl"
    path.write_text(first)
    for strict in (True, False):
        with pytest.raises(RecordingError, match=what):
            read_recording(path, strict=strict)


def test_missing_or_unwritable_paths_are_kvscope_errors(tmp_path):
    with pytest.raises(KVScopeError, match="cannot read recording"):
        read_recording(tmp_path / "nope.jsonl")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KVScopeError, match="cannot write recording"):
        JsonlRecorder(blocker / "events.jsonl", make_header("r", "cpu"))


def test_a_wrongly_typed_value_still_writes_a_valid_line():
    odd = StepBegin("not-a-number", 0)  # type: ignore[arg-type]
    assert json.loads(encode_event(odd)) == {"kind": "step_begin", "ts": "not-a-number", "step": 0}
