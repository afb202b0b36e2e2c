"""What watching costs the engine: one workload run headless, and run under the live TUI (its own
worker thread, the UI redrawing at its refresh rate in a 200x60 terminal, escape sequences encoded as a real
terminal driver would); prints both throughputs and the ratio.

    .venv/bin/python benchmarks/tui_overhead.py                  # random smollm2-135m shape
    .venv/bin/python benchmarks/tui_overhead.py --threads 2      # torch on both cores on both sides

By default each side gets what `kvscope run` gives it: headless, torch's default thread count
(every core); under the TUI on a CPU, one thread fewer (the UI's core). Both sides emit events (the
headless run folds them into its summary too). Runs alternate headless / TUI after a warm-up; the best
of each side is compared and the median ratio printed. Throughput is generated tokens per second of
wall time from the first step to the last, polled every 0.1 s on the TUI side (model loading is left
out on both sides). In the TUI runs the UI's own time per refresh (fold + panels
+ Textual's paint + encode) is reported as well.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import torch
from textual._compositor import CompositorUpdate

sys.path.insert(0, str(Path(__file__).parent))
from instrumentation import synthetic_recipe

from kvscope.cli.commands.live import _set_engine_threads, live_app
from kvscope.engine.model.loader import load_for_recipe
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.tui.app import REFRESH_HZ

SIZE = (200, 60)


def headless_run(recipe, loaded) -> tuple[int, float]:
    session = RunSession(recipe, bus=EventBus(), loaded=loaded)
    t0 = time.perf_counter()
    session.run()
    wall = time.perf_counter() - t0
    return sum(len(o.token_ids) for o in session.outputs.values()), wall


async def tui_run(recipe, refresh_hz: float) -> tuple[int, float, list[float], float]:
    """(generated tokens, wall s from resume to the last step, UI ms per refresh, UI thread CPU s)."""
    app = live_app(recipe, start_paused=True, refresh_hz=refresh_hz)
    ui_ms: list[float] = []

    def encode(screen, update) -> None:  # what App._display does on a real terminal, less the write
        if isinstance(update, CompositorUpdate):
            update.render_segments(app.console)

    async with app.run_test(size=SIZE) as pilot:
        app._display = encode
        sync, paint = app.sync, app.screen._on_timer_update

        def timed_sync() -> None:
            t = time.perf_counter()
            sync()
            paint()
            ui_ms.append((time.perf_counter() - t) * 1e3)

        c = app.controller
        assert await asyncio.to_thread(c.wait_idle, 600), "the model did not load"
        app.sync = timed_sync
        t0, ui_cpu0 = time.perf_counter(), time.thread_time()  # the app's event loop runs on this thread
        await pilot.press("space")
        while not c.finished and c.error is None:
            await asyncio.sleep(0.1)
        wall, ui_cpu = time.perf_counter() - t0, time.thread_time() - ui_cpu0
        if c.error is not None:
            raise c.error
        tokens = sum(len(o.token_ids) for o in c.session.outputs.values())
        await pilot.press("q")
    return tokens, wall, ui_ms, ui_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m", help="random-weights model shape")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side after the warm-up")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on both sides (default: as kvscope run)")
    parser.add_argument("--refresh-hz", type=float, default=REFRESH_HZ, help=f"UI refresh rate (default {REFRESH_HZ})")
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    recipe = synthetic_recipe(args.shape, args.requests, args.max_tokens)
    loaded = load_for_recipe(recipe)
    device = str(loaded.device)
    headless_run(recipe, loaded)  # warm-up
    headless, tui, ui_ms, ui_load = [], [], [], []
    threads = {}
    for _ in range(args.repeats):
        torch.set_num_threads(args.threads or default_threads)
        threads["headless"] = torch.get_num_threads()
        tokens, wall = headless_run(recipe, loaded)
        headless.append(tokens / wall)
        torch.set_num_threads(default_threads)
        _set_engine_threads(device, args.threads)
        threads["TUI"] = torch.get_num_threads()
        tokens, wall, frames, ui_cpu = asyncio.run(tui_run(recipe, args.refresh_hz))
        tui.append(tokens / wall)
        ui_ms.extend(frames)
        ui_load.append(ui_cpu / wall)
    ratios = [t / h for h, t in zip(headless, tui)]
    ui_ms.sort()
    print(f"workload: {args.requests} requests x {args.max_tokens} tokens, {args.shape} (random weights) on {device},"
          f" terminal {SIZE[0]}x{SIZE[1]}, UI at {args.refresh_hz:g} Hz")
    print(f"headless ({threads['headless']} torch threads)  {max(headless):8.1f} tok/s best"
          f"  ({', '.join(f'{x:.1f}' for x in headless)})")
    print(f"TUI      ({threads['TUI']} torch threads)  {max(tui):8.1f} tok/s best"
          f"  ({', '.join(f'{x:.1f}' for x in tui)})")
    print(f"ratio TUI / headless: {max(tui) / max(headless):.3f} best, {statistics.median(ratios):.3f} median")
    if ui_ms:
        print(f"UI refresh while the engine runs: p50 {statistics.median(ui_ms):.1f} ms,"
              f" p95 {ui_ms[int(0.95 * (len(ui_ms) - 1))]:.1f} ms over {len(ui_ms)} refreshes;"
              f" the UI thread used {100 * statistics.median(ui_load):.0f}% of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
