"""The TUI's cheap paths draw what the plain paths would: the block map's incremental update (only the
blocks an EngineView touched) against a full recompute, the request list's resize without a screen
layout, TextLines' per-line repaint, and the sparkline."""

from __future__ import annotations

import asyncio
import random

from rich.text import Text
from textual.app import App, ComposeResult
from textual.reactive import var

from kvscope.events.records import BlockEvent, RunInfo
from kvscope.events.vocabulary import ALLOC, CACHED, EVICT, FREE, PREFIX_HIT
from kvscope.inspector.state import EngineView, RequestView
from kvscope.tui.panels.scheduler_panel import format_row
from kvscope.tui.widgets.bars import spark_text
from kvscope.tui.widgets.batch_timeline import CELL, LABEL, BatchTimelineView, cell, chunk_label
from kvscope.tui.widgets.block_map import SELECTED_GLYPH, BlockMap, cells_from_view
from kvscope.tui.widgets.request_list import RequestList
from kvscope.tui.widgets.status_line import StatusLine
from kvscope.tui.widgets.text_lines import TextLines

NUM_BLOCKS = 600


def run_info(num_blocks: int) -> RunInfo:
    return RunInfo(0, -1, "t", 2, 2, 1, 8, 16, "float32", "cpu", "torch", "continuous",
                   num_blocks, 4, 1024, 64, 4, 256, True)


def random_block_events(rng: random.Random, view: EngineView, n: int) -> list[BlockEvent]:
    """Plausible alloc / prefix-hit / cache / free / evict events against the view's current pool."""
    out = []
    for _ in range(n):
        free = [b for b, r in enumerate(view.block_refs) if r == 0]
        held = [(rid, t) for rid, t in view.tables.items() if t]
        what = rng.choice([ALLOC, ALLOC, PREFIX_HIT, CACHED, FREE, EVICT])
        if what == ALLOC and free:
            rid = rng.randrange(40)
            ids = tuple(rng.sample(free, min(len(free), rng.randint(1, 12))))
            out.append(BlockEvent(0, 0, ALLOC, rid, ids, len(view.tables.get(rid, ())), tuple(1 for _ in ids)))
        elif what == PREFIX_HIT and held:
            rid, table = rng.choice(held)
            other = rng.randrange(40, 80)
            ids = tuple(table[:2])
            out.append(BlockEvent(0, 0, PREFIX_HIT, other, ids, len(view.tables.get(other, ())),
                                  tuple(view.block_refs[b] + 1 for b in ids)))
        elif what == CACHED and held:
            rid, table = rng.choice(held)
            out.append(BlockEvent(0, 0, CACHED, rid, tuple(table), 0, (), tuple(rng.randint(1, 99) for _ in table)))
        elif what == FREE and held:
            rid, table = rng.choice(held)
            out.append(BlockEvent(0, 0, FREE, rid, tuple(table), 0, tuple(view.block_refs[b] - 1 for b in table)))
        elif what == EVICT:
            cached = [b for b, r in enumerate(view.block_refs) if r == 0 and view.block_hash[b]]
            if cached:
                out.append(BlockEvent(0, 0, EVICT, -1, (rng.choice(cached),), -1, (0,)))
        if out:
            view.apply(out[-1])
    return out


class MapApp(App):
    def compose(self) -> ComposeResult:
        yield BlockMap(id="incremental")
        yield BlockMap(id="full")


def test_block_map_incremental_update_draws_what_a_full_recompute_draws():
    async def scenario() -> None:
        app = MapApp()
        async with app.run_test(size=(90, 40)) as pilot:
            incremental = app.query_one("#incremental", BlockMap)
            full = app.query_one("#full", BlockMap)
            rng = random.Random(7)
            view = EngineView()
            view.apply(run_info(NUM_BLOCKS))
            for step in range(40):
                random_block_events(rng, view, rng.randint(1, 8))
                selected = rng.choice(sorted(view.tables) or [None])
                highlight = frozenset(view.tables.get(selected, ())) if step % 3 else frozenset()
                incremental.show_view(view, view.take_touched_blocks(), highlight)  # as the app does
                assert not view.touched_blocks  # the map took them
                full.set_cells(cells_from_view(view), highlight)
                assert incremental._codes == full._codes, f"step {step}"
                assert incremental.cells.owners == view.block_owner
                await pilot.pause()
                # what the screen shows (Textual's cached lines, so a row left out of a repaint shows
                # stale) against rows drawn afresh from a full recompute
                region = incremental.content_region
                screen = app.screen._compositor.render_strips()
                rows = [screen[y].crop(region.x, region.x + region.width).text
                        for y in range(region.y, region.y + region.height)]
                assert rows == [full.render_line(y).crop(0, region.width).text for y in range(region.height)]
                if highlight:
                    assert sum(r.count(SELECTED_GLYPH) for r in rows) >= min(len(highlight), 1)
            # a reset (the next run's RunInfo) redraws everything
            view.apply(run_info(NUM_BLOCKS))
            incremental.show_view(view, view.take_touched_blocks())
            assert set(incremental._codes) == {0}

    asyncio.run(scenario())


class ListApp(App):
    def compose(self) -> ComposeResult:
        yield RequestList(format_row, id="list")


def test_request_list_resizes_without_a_screen_layout():
    async def scenario() -> None:
        app = ListApp()
        async with app.run_test(size=(80, 12)) as pilot:
            lst = app.query_one(RequestList)
            rows = [RequestView(i, "running", 10, i, 10 + i, 20) for i in range(30)]
            lst.set_rows(rows, None)
            await pilot.pause()
            lst.scroll_to(y=25, animate=False)
            await pilot.pause()
            for count in (29, 5, 30, 0, 12):
                lst.set_rows(rows[:count], None)
                assert not lst._layout_required  # a row count is no reason to lay out the screen
                assert lst.virtual_size.height == count
                assert lst.vertical_scrollbar.window_virtual_size == count
                assert lst.scroll_y <= lst.max_scroll_y
                await pilot.pause()
                top = int(lst.scroll_offset.y)
                shown = [lst.render_line(y).text for y in range(lst.size.height)]
                on_screen = rows[top:min(count, top + lst.size.height)]
                expected = ["".join(t for t, _ in format_row(r, False)) for r in on_screen]
                assert [s.rstrip() for s in shown[:len(expected)]] == [e.rstrip() for e in expected]
                assert all(not s.strip() for s in shown[len(expected):])

    asyncio.run(scenario())


class LinesApp(App):
    def compose(self) -> ComposeResult:
        yield TextLines("a\nb\nc", id="lines")


def test_text_lines_repaints_only_changed_lines_and_grows_with_its_text():
    async def scenario() -> None:
        app = LinesApp()
        async with app.run_test(size=(40, 10)) as pilot:
            w = app.query_one(TextLines)
            await pilot.pause()
            assert w.size.height == 3
            strips = list(w._strips)
            w.set_text(Text("a\nB\nc"))
            assert w._strips[0] is strips[0] and w._strips[2] is strips[2] and w._strips[1] is None
            await pilot.pause()
            assert [w.render_line(y).text for y in range(3)] == ["a", "B", "c"]
            w.set_text("one line only, cropped when it is longer than the widget is wide")
            await pilot.pause()
            assert w.size.height == 1
            assert str(w.render()) == "one line only, cropped when it is longer than the widget is wide"

    asyncio.run(scenario())


def test_spark_text_scales_to_the_largest_value_and_keeps_the_last_width_values():
    assert spark_text([0, 4, 8], 10, "red").plain == "▁▅█"
    assert spark_text([0.0, 0.0], 5, "red").plain == "▁▁"
    assert spark_text(list(range(100)), 8, "red").plain == spark_text(list(range(92, 100)), 8, "red").plain
    assert len(spark_text(list(range(100)), 8, "red").plain) == 8
    assert spark_text([], 8, "red").plain == ""


def test_the_tui_imports_neither_the_engine_nor_torch():
    """The TUI only reads (events, snapshots) and steers through the controller: the cli wires the engine."""
    import pathlib
    import subprocess
    import sys

    import kvscope.tui

    folder = pathlib.Path(kvscope.tui.__path__[0])
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    for path in folder.glob("*.py"):  # not even lazily, inside a function
        source = path.read_text(encoding="utf-8")
        assert "kvscope.engine" not in source and "import torch" not in source, path.name
    code = (f"import sys\nfor m in {modules!r}: __import__('kvscope.tui.' + m)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('kvscope.engine')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class PickApp(App):
    def __init__(self) -> None:
        super().__init__()
        self.picked: list = []

    def compose(self) -> ComposeResult:
        yield BlockMap(id="map")
        yield RequestList(format_row, id="list")

    def on_block_map_selected(self, message: BlockMap.Selected) -> None:
        self.picked.append(message)

    def on_request_list_selected(self, message: RequestList.Selected) -> None:
        self.picked.append(message)


def test_selection_messages_carry_the_widget_that_sent_them():
    async def scenario() -> None:
        app = PickApp()
        async with app.run_test(size=(80, 20)) as pilot:
            bmap, lst = app.query_one(BlockMap), app.query_one(RequestList)
            view = EngineView()
            view.apply(run_info(40))
            view.apply(BlockEvent(0, 0, ALLOC, 3, (5, 6), 0, (1, 1)))
            bmap.show_view(view, view.take_touched_blocks())
            await pilot.click("#map", offset=bmap.offset_of(6))
            lst.set_rows([RequestView(3, "running", 10, 0, 10, 20)], None)
            lst.focus()
            await pilot.press("enter")
            await pilot.pause()
            assert [(type(m), m.control, m.request_id) for m in app.picked] == [
                (BlockMap.Selected, bmap, 3), (RequestList.Selected, lst, 3)]

    asyncio.run(scenario())


class TimelineApp(App):
    def __init__(self) -> None:
        super().__init__()
        self.picked: list[int] = []

    def compose(self) -> ComposeResult:
        yield BatchTimelineView(id="timeline")

    def on_batch_timeline_view_selected(self, message: BatchTimelineView.Selected) -> None:
        self.picked.append(message.request_id)


def test_batch_timeline_draws_each_cell_and_scrolls_with_the_run():
    from kvscope.events.records import RequestEvent, StepBegin, StepEnd
    from kvscope.events.vocabulary import ARRIVED, FINISHED
    from kvscope.inspector.batch_timeline import BatchTimeline
    from support.batch_stream import stream

    async def scenario() -> None:
        app = TimelineApp()
        async with app.run_test(size=(60, 8)) as pilot:
            view = app.query_one(BatchTimelineView)
            timeline = BatchTimeline()
            timeline.take_all(stream())
            view.show(timeline, selected=1)
            await pilot.pause()
            lines = [view.render_line(y).text for y in range(4)]
            assert lines[0].startswith("step   0") and " 5 " in lines[0]
            assert lines[1].rstrip() == "#0     16  4━━━ ✕  ~  22━━✓"
            assert lines[2].rstrip() == "#1        ·   8━━━━━✓"
            assert lines[3].rstrip() == "#2              ·  ✓"
            assert next(iter(view.render_line(2))).style.reverse  # the selected request's label
            await pilot.click("#timeline", offset=(2, 3))
            await pilot.pause()
            assert app.picked == [2]
            # a long run: the columns end at the newest step
            for n in range(7, 40):
                timeline.take_all([RequestEvent(10 * n, n, n, ARRIVED), StepBegin(10 * n, n),
                                   RequestEvent(10 * n + 4, n, n, FINISHED, reason="stop"),
                                   StepEnd(10 * n + 5, n, 10 * n, 1, 16, ((n, 3),))])
            view.show(timeline)
            await pilot.pause()
            columns = (60 - LABEL) // CELL
            assert (view.first, view.last) == (39 - columns + 1, 39)
            assert " 35 " in view.render_line(0).text and " 5 " not in view.render_line(0).text
            assert view.lanes[0].request_id == view.first and view.lanes[-1].request_id == 39

    asyncio.run(scenario())


def test_prefill_chunk_labels_fit_three_columns():
    assert [chunk_label(n) for n in (7, 512, 2500, 16_384, 250_000)] == ["  7", "512", "2k5", "16k", "≫"]
    assert all(len(cell(code)[0]) == CELL for code in range(64))


def test_rolled_back_blocks_flash_until_the_next_step():
    """Blocks speculative decoding hands back (spec_rollback) are drawn with the rollback glyph for the rest of
    their step, incrementally as in a full recompute, and as free blocks once the next step begins."""
    from kvscope.events.records import StepBegin
    from kvscope.events.vocabulary import SPEC_ALLOC, SPEC_ROLLBACK
    from kvscope.tui.widgets.block_map import ROLLBACK_GLYPH

    async def scenario() -> None:
        app = MapApp()
        async with app.run_test(size=(90, 40)) as pilot:
            incremental = app.query_one("#incremental", BlockMap)
            view = EngineView()
            view.apply(run_info(NUM_BLOCKS))
            view.apply(StepBegin(1, 0))
            view.apply(BlockEvent(2, 0, ALLOC, 1, (0, 1), 0, (1, 1)))
            view.apply(BlockEvent(3, 0, SPEC_ALLOC, 1, (2, 3), 2, (1, 1)))
            view.apply(BlockEvent(4, 0, SPEC_ROLLBACK, 1, (3,), 3, (0,)))
            incremental.show_view(view, view.take_touched_blocks())
            assert incremental._codes == cells_from_view(view).codes
            await pilot.pause()
            assert incremental.render_line(0).text.count(ROLLBACK_GLYPH) == 1
            assert view.tables == {1: [0, 1, 2]}
            view.apply(StepBegin(5, 1))
            incremental.show_view(view, view.take_touched_blocks())
            assert incremental._codes == cells_from_view(view).codes
            await pilot.pause()
            assert ROLLBACK_GLYPH not in incremental.render_line(0).text

    asyncio.run(scenario())


class StatusApp(App):
    """An app with the three reactives KVScopeApp binds its status line to."""

    state = var("loading")
    delay = var(0.0)
    error = var(None)

    def compose(self) -> ComposeResult:
        yield StatusLine("run", last_position=9, id="status").data_bind(
            state=StatusApp.state, delay_s=StatusApp.delay, error=StatusApp.error)


def test_status_line_follows_the_reactives_bound_to_it_and_the_ones_set_on_it():
    async def scenario() -> None:
        app = StatusApp()
        async with app.run_test(size=(120, 3)) as pilot:
            line = app.query_one(StatusLine)
            await pilot.pause()
            assert "step -1 (0/9) │ loading" in line.text.plain and "delay" not in line.text.plain
            app.state, app.delay = "paused", 0.25
            line.step, line.position = 4, 5
            assert "step 4 (5/9) │ paused │ delay 0.25 s" in line.text.plain
            app.error = RuntimeError("out of blocks")
            assert line.text.plain.endswith("│ out of blocks")
            app.state = "running"
            await pilot.pause()
            assert "running" in str(line.render()) and "paused" not in str(line.render())

    asyncio.run(scenario())


def test_device_panel_sizes_are_human_bytes():
    from kvscope.inspector.human_units import human_bytes
    from kvscope.inspector.live.device_stats import DeviceReading
    from kvscope.tui.panels.device_panel import format_reading

    used, total = int(450.3 * (1 << 20)), int(15.5 * (1 << 30))
    shown = format_reading(DeviceReading("cpu", "this process", used, total, 50.0, cpu_count=2)).plain
    assert "450.3 MiB / 15.5 GiB" in shown
    assert f"{human_bytes(used, '.1f')} / {human_bytes(total, '.1f')}" in shown
