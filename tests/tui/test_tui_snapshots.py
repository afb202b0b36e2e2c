"""Snapshot tests (pytest-textual-snapshot) of the main screen at a fixed step of a seeded tiny
run, and of the replay screen, each with a request selected: the block map, the batch timeline (ending at
the live step, or at the replay cursor's) and the selected request's token stream. Deterministic mode
hides every wall-clock readout (latencies, achieved FLOP/s, device), so only the engine's seeded state is
drawn.

Update the stored SVGs after an intended change with: pytest tests/tui/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import asyncio

from kvscope.cli.commands.live import live_app
from kvscope.cli.commands.replay import replay_app
from kvscope.cli.text_probe import attach_text_probe
from kvscope.config.recipe import Recipe
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.inspector.export.recording import JsonlRecorder, make_header

SIZE = (160, 50)
STEPS = 6
RECIPE = {
    "name": "snapshot",
    "model": {"source": "random", "shape": "tiny", "seed": 0},
    "cache": {"block_size": 4, "num_blocks": 96, "prefix_caching": True},
    "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 32},
    "workload": {"synthetic": {"num_requests": 8, "prompt_len": {"min": 8, "max": 24},
                               "output_len": {"min": 8, "max": 16}, "shared_prefix": 8, "seed": 1}},
}


def recipe() -> Recipe:
    return Recipe.from_dict(RECIPE, source="<snapshot>")


def test_main_screen_at_fixed_step(snap_compare):
    app = live_app(recipe(), start_paused=True, deterministic=True)

    async def run_before(pilot) -> None:
        c = app.controller
        assert await asyncio.to_thread(c.wait_idle, 60)
        for _ in range(STEPS):
            assert c.step_once()
            assert await asyncio.to_thread(c.wait_idle, 60)
        app.sync()
        rid = min(r for r, t in app.model.view.tables.items() if t)
        app.select_request(rid)
        await pilot.pause()
        assert app.model.view.step == STEPS - 1

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_replay_screen(snap_compare, tmp_path):
    path = tmp_path / "events.jsonl"
    recorder = JsonlRecorder(path, make_header(RECIPE, "cpu"))
    bus = EventBus()
    bus.subscribe(recorder)
    session = RunSession(recipe(), bus=bus)
    attach_text_probe(session)  # as `kvscope trace` and `run --record` do: the recording carries the text
    session.run()
    recorder.close()
    app = replay_app(str(path), deterministic=True)

    async def run_before(pilot) -> None:
        await pilot.press("g")
        await pilot.press("4", "enter")
        await pilot.pause()
        assert app.model.view.step == 4
        assert app.model.timeline.last_step == 4  # the timeline follows the cursor
        app.select_request(1)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
