"""Regenerate docs/screenshot.svg: the live TUI on recipes/quickstart.yaml (real SmolLM2), paused
mid-run with a decoding request selected.

    .venv/bin/python docs/make_screenshot.py [--steps 14] [--out docs/screenshot.svg]
"""

from __future__ import annotations

import argparse
import asyncio

from kvscope.cli.commands.live import live_app
from kvscope.config.recipe import load_recipe
from kvscope.tui.widgets.block_map import BlockMap


async def shoot(steps: int, out: str, size: tuple[int, int]) -> None:
    app = live_app(load_recipe("recipes/quickstart.yaml"))
    async with app.run_test(size=size) as pilot:
        c = app.controller
        while app.model.view.step < steps and not c.finished:
            await pilot.pause(0.05)
        await pilot.press("space")
        await pilot.pause(0.5)
        view = app.model.view
        rid, table = max(((r, t) for r, t in view.tables.items() if t), key=lambda rt: len(rt[1]))
        block = next(b for b in table if view.block_refs[b] == 1)
        await pilot.click("#block-map", offset=app.query_one(BlockMap).offset_of(block))
        await pilot.pause(0.5)
        app.save_screenshot(out)
        print(f"wrote {out}: step {view.step}, request {rid} selected")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--out", default="docs/screenshot.svg")
    args = ap.parse_args()
    asyncio.run(shoot(args.steps, args.out, (200, 56)))


if __name__ == "__main__":
    main()
