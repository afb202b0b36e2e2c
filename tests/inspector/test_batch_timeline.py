"""The batch timeline fold (what each request did in each step), its SVG panels in the bench chart, and
the token stream (TokenText events from the cli's text probe, folded by TokenStream)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from functools import cache

import pytest

from kvscope.cli.text_probe import attach_text_probe
from kvscope.config.recipe import Recipe
from kvscope.engine.model.tokenizer import ByteTokenizer
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus, EventList
from kvscope.events.records import RequestEvent, TokenText
from kvscope.events.vocabulary import ARRIVED, FINISHED
from kvscope.inspector.batch_timeline import (
    ABSENT,
    DECODE,
    FINISHED_AT,
    PREEMPTED_AT,
    PREFILL,
    REQUEUED,
    WAITING,
    BatchTimeline,
    mark,
    mark_finished,
    mark_kind,
    mark_tokens,
)
from kvscope.inspector.export.timeline_svg import timeline_section
from kvscope.inspector.token_stream import TokenStream
from support.batch_stream import info, step, stream


def kinds(codes: list[int]) -> list[int]:
    return [mark_kind(c) for c in codes]


def test_marks_pack_kind_tokens_and_finish() -> None:
    code = mark(PREFILL, 1234, finished=True)
    assert (mark_kind(code), mark_tokens(code), mark_finished(code)) == (PREFILL, 1234, True)
    assert mark_kind(WAITING) == WAITING and not mark_finished(mark(DECODE, 1))


def test_each_cell_says_what_the_request_did_in_that_step() -> None:
    t = BatchTimeline()
    t.take_all(stream())
    assert (t.first_step, t.last_step) == (0, 6)
    zero, one, two = (t.lanes[r].cells(0, 6) for r in (0, 1, 2))
    assert kinds(zero) == [PREFILL, PREFILL, DECODE, PREEMPTED_AT, REQUEUED, PREFILL, DECODE]
    assert [mark_tokens(c) for c in zero[:2]] == [16, 4] and mark_tokens(zero[5]) == 22
    assert mark_finished(zero[6]) and not mark_finished(zero[2])
    assert kinds(one) == [ABSENT, WAITING, PREFILL, DECODE, DECODE, ABSENT, ABSENT]
    assert mark_finished(one[4])
    assert kinds(two) == [ABSENT, ABSENT, ABSENT, WAITING, FINISHED_AT, ABSENT, ABSENT]
    # a window in the middle knows a request waiting since an earlier preemption is still requeued
    assert kinds(t.lanes[0].cells(4, 4)) == [REQUEUED]
    assert [lane.request_id for lane in t.window(5, 6)] == [0]
    assert [lane.request_id for lane in t.window(3, 4)] == [0, 1, 2]


def test_a_new_run_starts_a_new_timeline_and_old_requests_are_forgotten() -> None:
    t = BatchTimeline(keep_steps=2)
    t.take_all(stream())
    version = t.version
    t(info())
    assert t.lanes == {} and t.last_step == -1 and t.version > version
    ev = [info()]
    for n in range(130):  # one short request per step
        ev += [RequestEvent(10 * n, n, n, ARRIVED)] + step(n, prefill=[(n, 4)])
        ev += [RequestEvent(10 * n + 6, n, n, FINISHED)]
    t.take_all(ev)
    assert len(t.lanes) < 70 and max(t.lanes) == 129 and t.first_step > 100


TINY = {
    "name": "timeline",
    "model": {"source": "random", "shape": "tiny", "seed": 0},
    "cache": {"block_size": 4, "num_blocks": 40},
    "scheduler": {"max_num_seqs": 3, "max_num_batched_tokens": 24},
    "workload": {"synthetic": {"num_requests": 9, "prompt_len": {"min": 6, "max": 20},
                               "output_len": {"min": 2, "max": 14}, "arrival_rate": 0, "seed": 4}},
}


@cache
def run_tiny(policy: str) -> tuple[BatchTimeline, list]:
    bus = EventBus()
    events = bus.subscribe(EventList())
    timeline = bus.subscribe(BatchTimeline(keep_steps=None))
    recipe = Recipe.from_dict(dict(TINY, scheduler=dict(TINY["scheduler"], policy=policy)))
    RunSession(recipe, bus=bus).run()
    return timeline, events.events


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_timeline_agrees_with_every_step_of_the_engine(policy) -> None:
    timeline, events = run_tiny(policy)
    ends = [e for e in events if e.kind == "step_end"]
    assert timeline.last_step == ends[-1].step
    lanes = timeline.lanes
    for e in ends:
        doing = {rid: mark_kind(lanes[rid].cells(e.step, e.step)[0]) for rid in lanes}
        assert {r for r, k in doing.items() if k == PREFILL} == {r for r, _ in e.prefill}
        assert {r for r, k in doing.items() if k == DECODE} == set(e.decode)
        for rid, n in e.prefill:
            assert mark_tokens(lanes[rid].cells(e.step, e.step)[0]) == n
    finished = {e.request_id: e.step for e in events if e.kind == "request" and e.what == FINISHED}
    assert {rid: lane.finished for rid, lane in lanes.items()} == finished


def test_static_batches_wait_for_the_longest_request_continuous_refills_at_once() -> None:
    seats = TINY["scheduler"]["max_num_seqs"]

    def first_work(lane) -> int:
        return lane.steps[0]

    static, _ = run_tiny("static")
    lanes = [static.lanes[r] for r in sorted(static.lanes)]
    for b in range(seats, len(lanes), seats):  # batch k + 1 starts after every request of batch k finished
        assert min(first_work(x) for x in lanes[b:b + seats]) > max(x.finished for x in lanes[b - seats:b])
    continuous, _ = run_tiny("continuous")
    lanes = [continuous.lanes[r] for r in sorted(continuous.lanes)]
    # a seat is refilled while others of the first wave still run
    assert first_work(lanes[seats]) <= max(x.finished for x in lanes[:seats])
    assert continuous.last_step < static.last_step


def test_timeline_svg_panels_share_one_scale_and_match_the_folds() -> None:
    static, _ = run_tiny("static")
    continuous, _ = run_tiny("continuous")
    parts, height = timeline_section([("static", static), ("continuous", continuous)], 20, 0, 880)
    svg = ET.fromstring('<svg xmlns="http://www.w3.org/2000/svg">' + "\n".join(parts) + "</svg>")
    ns = "{http://www.w3.org/2000/svg}"
    panels = svg.findall(f"{ns}svg")
    assert [p.get("data-variant") for p in panels] == ["static", "continuous"] and height > 0
    for panel, timeline in zip(panels, (static, continuous)):
        assert int(panel.get("data-steps")) == timeline.last_step - timeline.first_step + 1
        cells = panel.findall(f"{ns}rect[@class='cell']")
        decoded = Counter()
        for c in cells:
            if c.get("data-kind") == "decode":
                decoded[int(c.get("data-request"))] += int(c.get("data-last")) - int(c.get("data-first")) + 1
        assert decoded == Counter({rid: sum(mark_kind(m) == DECODE for m in lane.marks)
                                   for rid, lane in timeline.lanes.items() if any(mark_kind(m) == DECODE
                                                                                 for m in lane.marks)})
    # one scale: a step is as wide in both panels, so the longer run draws the longer picture
    def width_per_step(panel) -> float:
        c = next(r for r in panel.findall(f"{ns}rect[@class='cell']") if r.get("data-kind") == "decode")
        return float(c.get("width")) / (int(c.get("data-last")) - int(c.get("data-first")) + 1)

    assert width_per_step(panels[0]) == pytest.approx(width_per_step(panels[1]))


# --------------------------------------------------------------------------- token stream

def test_text_decoder_holds_back_a_split_character_until_it_completes() -> None:
    tok = ByteTokenizer()
    decoder = tok.incremental_detokenizer(skip_special_tokens=False)
    e_acute = list("é".encode())
    assert decoder.push([ord("h"), ord("i")]) == "hi"
    assert decoder.push(e_acute[:1]) == ""          # half a character: held back
    assert decoder.push(e_acute[1:]) == "é"
    assert decoder.push([0xFF]) == ""               # invalid UTF-8 ...
    assert decoder.push([0xFF, 0xFF]) == ""
    assert decoder.push([0xFF]) == ""
    # ... shown once decodable text follows it; special tokens are part of the stream
    assert decoder.push([tok.eos_token_ids[0]]) == "\ufffd" * 4 + "</s>"
    assert decoder.push([ord("!")]) == "!"
    decoder.push([0xC3])
    assert decoder.flush() == "\ufffd" and decoder.flush() == ""


def test_token_stream_holds_each_requests_prompt_and_output() -> None:
    bus = EventBus()
    stream = bus.subscribe(TokenStream())
    recipe = Recipe.from_dict(dict(TINY, workload={"prompts": ["hello there", "general kenobi", "ab"]},
                                   sampling={"max_tokens": 6, "ignore_eos": True}))
    session = RunSession(recipe, bus=bus)
    attach_text_probe(session)
    session.run()
    tok = session.tokenizer
    assert sorted(stream.prompts) == sorted(session.outputs) == [0, 1, 2]
    for rid, out in session.outputs.items():
        assert stream.prompt(rid) == tok.decode(out.prompt_token_ids, skip_special_tokens=False)
        assert stream.output(rid) == tok.decode(out.token_ids, skip_special_tokens=False)
        assert stream.tokens[rid] == len(out.token_ids)
    assert "hello there" in stream.prompt(0)
    stream(info())
    assert not stream.has(0)


def test_token_stream_folds_text_events_in_order_and_forgets_the_oldest() -> None:
    s = TokenStream(keep=2)
    for ev in (TokenText(1, 0, 0, prompt="p0"), TokenText(2, 0, 0, "a", tokens=1), TokenText(3, 1, 0, "b", tokens=2),
               TokenText(4, 1, 1, prompt="p1"), TokenText(5, 2, 2, prompt="p2")):
        s(ev)
    assert not s.has(0) and s.prompt(1) == "p1" and s.output(2) == ""
    t = TokenStream()
    for piece in ("Par", "is", "."):
        t(TokenText(1, 0, 7, piece, tokens=1))
    assert t.output(7) == "Paris." and t.tokens[7] == 3
    t(TokenText(2, 1, 7, "!", tokens=1))
    assert t.output(7) == "Paris.!"
