"""The live TUI on a disaggregated deployment: one block map per engine, blocks pinned for a transfer
marked ⇄ on the prefill engine's map, the main panels following the decode engine."""

from __future__ import annotations

import asyncio

from kvscope.cli.commands.live import live_app
from kvscope.config.recipe import Recipe
from kvscope.tui.widgets.block_map import PINNED_GLYPH, BlockMap

RECIPE = {
    "name": "pd-pilot", "model": {"source": "random", "shape": "tiny", "seed": 0}, "attention_backend": "torch",
    "cache": {"block_size": 4, "num_blocks": 48}, "deployment": {"mode": "disaggregated"},
    "workload": {"synthetic": {"num_requests": 5, "prompt_len": {"min": 6, "max": 20},
                               "output_len": {"min": 6, "max": 10}, "seed": 2}},
}


def test_one_block_map_per_engine_and_pins_marked():
    async def scenario():
        app = live_app(Recipe.from_dict(RECIPE, source="<pd-pilot>"), deterministic=True, start_paused=True)
        async with app.run_test(size=(160, 50)) as pilot:
            c = app.controller
            pinned_seen = False
            for _ in range(40):
                await pilot.press("n")
                assert await asyncio.to_thread(c.wait_idle, 60)
                app.sync()
                await pilot.pause()
                app.refresh_panels()  # a map mounted by this sync is filled from the next refresh on
                await pilot.pause()
                prefill_map = app.query_one("#block-map-prefill-0", BlockMap) if app.query(
                    "#block-map-prefill-0") else None
                if prefill_map is None:
                    continue
                prefill_view = app.model.engines["prefill-0"]
                engine = c.session.engine.engines["prefill-0"].engine
                pins = {b for pin in engine.connector.pinned.values() for b in pin.request.block_table}
                assert prefill_view.pinned == pins  # the view rebuilt from events has the engine's pins
                if pins:
                    row = "".join(prefill_map.render_line(y).text for y in range(prefill_map.size.height))
                    assert row.count(PINNED_GLYPH) >= len(pins)
                    pinned_seen = True
                if c.finished:
                    break
            assert pinned_seen
            assert app.model.focus == "decode-0" and set(app.model.engines) == {"prefill-0", "decode-0"}
            main = app.query_one("#map-panel")
            assert main.border_title.startswith("decode-0: KV blocks")
            decode = c.session.engine.engines["decode-0"].engine
            assert app.model.view.tables == decode.block_tables()
            # the text panel follows the decode engine too: its requests' prompts and outputs, under its ids
            done = [r for r in decode.requests.values() if r.output_token_ids]
            assert done
            for r in done:
                assert app.model.text.prompt(r.request_id) == decode.tokenizer.decode(r.prompt_token_ids,
                                                                                      skip_special_tokens=False)
                assert app.model.text.output(r.request_id) == decode.tokenizer.decode(r.output_token_ids,
                                                                                      skip_special_tokens=False)
            await pilot.press("q")

    asyncio.run(scenario())
