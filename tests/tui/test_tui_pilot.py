"""Pilot tests of the live TUI over a tiny random model: pause, single step, select a request,
resume to the end, restart; and the replay app over a recording (step back / forward / jump,
damaged files). The oracles are the engine itself (RunSession.snapshot_tables / free / cached
block ids) and events folded independently of the app."""

from __future__ import annotations

import asyncio

import pytest

from kvscope.cli.commands.live import live_app
from kvscope.cli.commands.replay import replay_app
from kvscope.cli.main import main as cli_main
from kvscope.config.recipe import Recipe
from kvscope.engine.session import RunSession
from kvscope.inspector.export.recording import JsonlRecorder, RecordingError, make_header
from kvscope.inspector.human_units import percent
from kvscope.inspector.metrics import fragmentation
from kvscope.inspector.state import EngineView
from kvscope.tui.panels.info_panel import InfoPanel
from kvscope.tui.widgets.block_map import BlockMap
from kvscope.tui.widgets.meters import FragmentationMeters

SIZE = (160, 50)
RECIPE = {
    "name": "pilot",
    "model": {"source": "random", "shape": "tiny", "seed": 0},
    "cache": {"block_size": 4, "num_blocks": 64},
    "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 32},
    "workload": {"synthetic": {"num_requests": 8, "prompt_len": {"min": 8, "max": 24},
                               "output_len": {"min": 8, "max": 16}, "seed": 1}},
}


def recipe() -> Recipe:
    return Recipe.from_dict(RECIPE, source="<pilot>")


async def settle(app) -> None:
    """Wait (off the event loop) until the engine thread is idle, then pull its events into the UI."""
    assert await asyncio.to_thread(app.controller.wait_idle, 60)
    app.sync()


def status_text(app) -> str:
    return str(app.query_one("#status").render())


def panel_text(widget) -> str:
    return str(widget.render())


def test_pause_step_select_resume():
    async def scenario():
        app = live_app(recipe(), deterministic=True)
        async with app.run_test(size=SIZE) as pilot:
            c = app.controller
            await pilot.press("plus")          # a delay between steps, so the pause lands mid-run
            assert c.delay_s > 0
            await pilot.pause(0.2)
            await pilot.press("space")
            assert c.paused
            await settle(app)
            assert not c.finished, "the run ended before the pause; make the workload longer"
            view = app.model.view
            before = view.step
            await asyncio.sleep(0.3)            # paused: nothing moves
            await settle(app)
            assert view.step == before

            await pilot.press("n")
            await settle(app)
            await pilot.pause()
            assert view.step == before + 1
            assert f"step {before + 1}" in status_text(app)
            assert "paused" in status_text(app)

            # the view rebuilt from events matches the engine
            session = c.session
            assert view.tables == session.snapshot_tables()
            assert view.free_blocks() == session.free_block_ids()
            assert view.cached_blocks() == session.cached_block_ids()

            # click a block of a running request: it is selected, its blocks highlighted
            rid, table = next((r, t) for r, t in sorted(view.tables.items()) if t)
            block = next(b for b in table if view.block_refs[b] == 1)
            bmap = app.query_one(BlockMap)
            await pilot.click("#block-map", offset=bmap.offset_of(block))
            await pilot.pause()
            assert app.selected == rid
            assert bmap.highlight == set(session.snapshot_tables()[rid])
            info = panel_text(app.query_one(InfoPanel))
            expected = " ".join(f"L{i}→{b}" for i, b in enumerate(session.snapshot_tables()[rid]))
            assert expected in " ".join(info.replace("*", "").split())

            # the meters show exactly the metrics module's numbers, which match the engine's pool
            meters = app.query_one(FragmentationMeters)
            frag = fragmentation(view.last_kv)
            assert meters.shown == frag == app.model.metrics.last_fragmentation
            total = view.info.num_blocks
            used = total - len(session.free_block_ids()) - len(session.cached_block_ids())
            assert frag.usage == used / total
            shown = panel_text(meters)
            for value in (frag.usage, frag.internal, frag.contiguous_waste):
                assert percent(value) in shown

            await pilot.press("minus")
            assert c.delay_s == 0
            await pilot.press("space")
            assert not c.paused
            await settle(app)
            await pilot.pause()
            assert c.finished
            assert "finished" in status_text(app)
            assert all(r.status == "finished" for r in view.requests.values())
            assert len(view.requests) == RECIPE["workload"]["synthetic"]["num_requests"]
            await pilot.press("escape")
            await pilot.pause()
            assert app.selected is None
            assert "run finished" in panel_text(app.query_one(InfoPanel))
            assert view.tables == session.snapshot_tables() == {}

            steps_first_run = view.step
            await pilot.press("r")
            await settle(app)
            assert c.finished and app.model.view.step == steps_first_run  # same seeded workload again
            await pilot.press("q")

    asyncio.run(scenario())


def test_step_key_needs_pause():
    async def scenario():
        app = live_app(recipe(), start_paused=True, deterministic=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app)
            assert app.model.view.step == -1
            for expected in range(3):
                await pilot.press("n")
                await settle(app)
                assert app.model.view.step == expected
            await pilot.press("question_mark")
            assert type(app.screen).__name__ == "HelpScreen"
            await pilot.press("escape")
            assert type(app.screen).__name__ != "HelpScreen"
            await pilot.press("space")          # resume: n now does nothing
            assert app.controller.step_once() is False

    asyncio.run(scenario())


def record_run(path) -> list:
    """Run the tiny recipe headless into a recording; returns the events (the oracle)."""
    session_events: list = []
    rec = JsonlRecorder(path, make_header(RECIPE, "cpu"))
    from kvscope.events.bus import EventBus

    bus = EventBus()
    bus.subscribe(rec)
    bus.subscribe(session_events.append)
    RunSession(recipe(), bus=bus).run()
    rec.close()
    return session_events


def view_through(events, step: int) -> EngineView:
    view = EngineView()
    for e in events:
        if e.kind == "step_begin" and e.step > step:
            break
        view.apply(e)
    return view


def test_replay_steps_back_forward_and_jumps(tmp_path):
    path = tmp_path / "events.jsonl"
    events = record_run(path)
    last_step = max(e.step for e in events if e.kind == "step_end")

    async def scenario():
        app = replay_app(str(path), deterministic=True)
        async with app.run_test(size=SIZE) as pilot:
            view = app.model.view
            assert view.step == last_step
            await pilot.press("left")
            await pilot.press("left")
            assert app.model.view.step == last_step - 2
            assert app.model.view.tables == view_through(events, last_step - 2).tables
            await pilot.press("right")
            assert app.model.view.step == last_step - 1
            await pilot.press("g")
            await pilot.press("3", "enter")
            await pilot.pause()
            expected = view_through(events, 3)
            assert app.model.view.step == 3
            assert app.model.view.tables == expected.tables
            assert app.model.view.block_refs == expected.block_refs
            assert "step 3" in status_text(app)
            await pilot.press("home")
            assert app.replay.position == 0
            assert app.model.view.tables == {} and app.model.view.info == events[0]
            await pilot.press("end")
            assert app.model.view.step == last_step

    asyncio.run(scenario())


def test_replay_of_truncated_recording_stops_at_damage(tmp_path):
    path = tmp_path / "events.jsonl"
    record_run(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    cut = len(lines) // 2
    path.write_bytes(b"\n".join(lines[:cut]) + b"\n" + lines[cut][: len(lines[cut]) // 2])

    app = replay_app(str(path))
    damage = app.replay.timeline.damage
    assert f"events.jsonl:{cut + 1}:" in damage and "truncated" in damage
    assert app.replay.timeline.events and app.replay.last_position >= 1

    with pytest.raises(RecordingError, match=f"events.jsonl:{cut + 1}:"):
        replay_app(str(path), strict=True)


def test_cli_replay_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert cli_main(["replay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvscope: error: ") and "bad.jsonl:1" in err and err.count("\n") == 1
    assert cli_main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_replay_cursor_back_across_checkpoints_matches_a_fresh_fold():
    from kvscope.events.records import BlockEvent, RunInfo, StepBegin, StepEnd
    from kvscope.events.vocabulary import ALLOC, FREE
    from kvscope.inspector.export.replay import CHECKPOINT_EVERY, ReplayCursor, Timeline

    steps = 2 * CHECKPOINT_EVERY + 20
    events = [RunInfo(0, -1, "m", 1, 1, 1, 4, 4, "float32", "cpu", "torch", "continuous", steps, 4, 64, 32, 4, 64)]
    for s in range(steps):
        events.append(StepBegin(s, s))
        events.append(BlockEvent(s, s, ALLOC, s % 3, (s,), s // 3, (1,)))
        if s % 5 == 4:
            events.append(BlockEvent(s, s, FREE, (s - 1) % 3, (s - 1,), (s - 1) // 3, (0,)))
        events.append(StepEnd(s, s, s, 1, 32))
    cursor = ReplayCursor(Timeline.from_events(events), EngineView)
    for target in (steps, steps - 3, CHECKPOINT_EVERY + 1, 5, 2 * CHECKPOINT_EVERY + 7, 0):
        cursor.goto(target)
        oracle = view_through(events, target - 1)
        assert cursor.step == target - 1
        assert cursor.sink.tables == oracle.tables and cursor.sink.block_refs == oracle.block_refs


def test_roofline_bound_classification():
    from kvscope.costmodel.roofline_bound import Peaks, classify

    peaks = Peaks("dev", 100e12, 1e12)          # ridge at 100 FLOP/B
    assert classify(10.0, 9e12, peaks) == "memory"      # 90% of 10 TFLOP/s attainable
    assert classify(500.0, 80e12, peaks) == "compute"   # 80% of the compute roof
    assert classify(10.0, 0.5e12, peaks) == "overhead"  # 5% of what the roof allows
    assert classify(0.0, 1.0, peaks) == "-"


def test_live_tui_leaves_the_ui_a_core_on_cpu(monkeypatch):
    import torch

    from kvscope.cli.commands.live import _set_engine_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        _set_engine_threads("cpu", None)
        assert torch.get_num_threads() == 1
        _set_engine_threads("cpu", None)  # never below one
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        _set_engine_threads("cuda", None)  # the GPU does the work: the CPU threads stay
        assert torch.get_num_threads() == 2
        _set_engine_threads("cpu", 2)  # --threads wins
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # so does the user's environment
        _set_engine_threads("cpu", None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_selection_panel_streams_the_selected_requests_text():
    from kvscope.tui.panels.info_panel import one_line
    from kvscope.tui.widgets.batch_timeline import BatchTimelineView

    words = dict(RECIPE, workload={"prompts": ["hello there", "general kenobi"]},
                 sampling={"max_tokens": 6, "ignore_eos": True})

    async def scenario():
        app = live_app(Recipe.from_dict(words, source="<pilot>"), start_paused=True, deterministic=True)
        async with app.run_test(size=SIZE) as pilot:
            c = app.controller
            await settle(app)
            for _ in range(3):
                assert c.step_once()
                await settle(app)
            timeline = app.query_one(BatchTimelineView)
            inside = timeline.content_region.offset - timeline.region.offset  # past the panel's border
            await pilot.click("#timeline", offset=(inside.x + 1, inside.y + timeline.row_of(1)))  # selects it
            await pilot.pause()
            assert app.selected == 1
            request = c.session.engine.requests[1]
            tok = c.session.tokenizer
            shown = panel_text(app.query_one(InfoPanel))
            assert "general kenobi" in shown
            output = one_line(tok.decode(request.output_token_ids, skip_special_tokens=False))
            assert output and output in shown  # the text generated so far, live
            c.resume()
            await settle(app)
            await pilot.pause()
            final = one_line(tok.decode(request.output_token_ids, skip_special_tokens=False))
            assert len(final) > len(output) and final in panel_text(app.query_one(InfoPanel))
            await pilot.press("q")

    asyncio.run(scenario())


def test_spec_panel_shows_the_recordings_acceptance(tmp_path):
    """The speculative-decoding panel is hidden for a run without drafts and, over a recording with prompt
    lookup, shows the acceptance the recording's own events give."""
    from kvscope.events.bus import EventBus
    from kvscope.inspector.metrics import summarize
    from kvscope.tui.panels.spec_panel import SpecDecodePanel

    data = dict(RECIPE, speculative={"method": "ngram", "num_speculative_tokens": 3})
    path = tmp_path / "spec.jsonl"
    rec = JsonlRecorder(path, make_header(data, "cpu"))
    events: list = []
    bus = EventBus()
    bus.subscribe(rec)
    bus.subscribe(events.append)
    RunSession(Recipe.from_dict(data, source="<pilot>"), bus=bus).run()
    rec.close()
    spec = summarize(events).spec_decode
    assert spec is not None and spec.num_drafts > 0
    plain = tmp_path / "plain.jsonl"
    record_run(plain)

    async def scenario(recording: str, shown: bool):
        app = replay_app(recording, deterministic=True)
        async with app.run_test(size=SIZE):
            panel = app.query_one(SpecDecodePanel)
            assert panel.display is shown
            if shown:
                text = panel.text.plain
                assert f"{spec.num_accepted_tokens}/{spec.num_draft_tokens} accepted" in text
                assert f"{spec.mean_acceptance_length:.2f}" in text

    asyncio.run(scenario(str(path), True))
    asyncio.run(scenario(str(plain), False))


def test_accepted_drafts_are_coloured_in_the_token_stream():
    """With prompt lookup, the text probe sends each step's accepted drafts as their own `drafted` text; the
    token stream keeps their spans and the selection panel draws exactly those characters in the draft colour."""
    from kvscope.cli.text_probe import attach_text_probe
    from kvscope.events.bus import EventBus
    from kvscope.inspector.token_stream import TokenStream
    from kvscope.tui.panels.info_panel import DRAFTED_STYLE, token_stream_text

    data = dict(RECIPE, workload={"prompts": ["abcabcabcabc", "xyzxyzxyz"]},
                sampling={"max_tokens": 24, "ignore_eos": True},
                speculative={"method": "ngram", "num_speculative_tokens": 3})
    bus = EventBus()
    stream = TokenStream()
    texts: list = []
    bus.subscribe(stream)
    bus.subscribe(lambda e: texts.append(e) if e.kind == "text" else None)
    session = RunSession(Recipe.from_dict(data, source="<pilot>"), bus=bus)
    attach_text_probe(session)
    session.run()
    tok = session.tokenizer
    for rid, request in session.engine.requests.items():
        assert stream.output(rid) == tok.decode(request.output_token_ids, skip_special_tokens=False)
        drafted_tokens = sum(e.tokens for e in texts if e.request_id == rid and e.drafted)
        assert drafted_tokens > 0
        spans = stream.drafted[rid]
        assert sum(b - a for a, b in spans) == sum(len(e.text) for e in texts if e.request_id == rid and e.drafted)
        rendered = token_stream_text(stream, rid, 200, 10)
        green = {i for span in rendered.spans if str(span.style) == DRAFTED_STYLE
                 for i in range(span.start, span.end)}
        start = rendered.plain.index("output ") + len("output ")
        assert green == {start + i for a, b in spans for i in range(a, b)}
