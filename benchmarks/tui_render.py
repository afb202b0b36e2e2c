"""Benchmark: can the TUI keep up with a 10,000-block KV pool?

Builds a synthetic recording (no engine, no torch): a pool of NUM_BLOCKS blocks, a few hundred
requests holding blocks (some shared through prefix hits, some cached after finishing), and
steps that each allocate, share and free blocks. The app replays it step by step in a headless
terminal; per refresh it reports:

    update   folding the step's events into the EngineView/Metrics and pushing them into the panels
    map      rendering every visible row of the block map (the Line API render)
    frame    update + message handling + Textual laying out and painting the screen (headless driver),
             as wall time and as this process's CPU time (the fair number on a shared machine)

Goal: frame < 30 ms per refresh. Run: .venv/bin/python benchmarks/tui_render.py [--blocks N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from textual.geometry import Region

from kvscope.inspector.events import (
    ALLOC, ARRIVED, CACHED, FINISHED, FREE, PREFIX_HIT, SCHEDULED,
    BlockEvent, KVSnapshot, RequestEvent, RunInfo, StepBegin, StepEnd,
)
from kvscope.inspector.replay import ReplayCursor, Timeline
from kvscope.tui.app import KVScopeApp
from kvscope.tui.block_map import BlockMap
from kvscope.tui.model import UIModel


def synthetic_events(num_blocks: int, steps: int, block_size: int = 16, seed: int = 0) -> list:
    rng = random.Random(seed)
    ts = 1_000
    ev: list = [RunInfo(ts, -1, "synthetic", 30, 9, 3, 64, 576, "bfloat16", "cpu", "torch", "continuous",
                        num_blocks, block_size, 2 * 30 * 3 * 64 * 2 * block_size, 2048, 256, 8192, True)]
    free = list(range(num_blocks))
    rng.shuffle(free)
    refs = [0] * num_blocks
    tables: dict[int, list[int]] = {}
    next_rid = 0
    prefix = [free.pop() for _ in range(8)]  # a shared system prompt
    for b in prefix:
        refs[b] = 0

    def alloc(rid: int, n: int, step: int) -> None:
        ids = tuple(free.pop() for _ in range(min(n, len(free))))
        for b in ids:
            refs[b] = 1
        table = tables.setdefault(rid, [])
        ev.append(BlockEvent(ts, step, ALLOC, rid, ids, len(table), tuple(1 for _ in ids)))
        table.extend(ids)

    for step in range(steps):
        ts += 1_000_000
        ev.append(StepBegin(ts, step))
        # arrivals that share the prefix until ~85% of the pool is held
        while len(free) > num_blocks * 0.15:
            rid = next_rid
            next_rid += 1
            ev.append(RequestEvent(ts, step, rid, ARRIVED, 128, 0, 0, 256))
            ev.append(RequestEvent(ts, step, rid, SCHEDULED, 128, 0, 0, 256))
            for b in prefix:
                refs[b] += 1
            ev.append(BlockEvent(ts, step, PREFIX_HIT, rid, tuple(prefix), 0, tuple(refs[b] for b in prefix),
                                 tuple(b + 1 for b in prefix)))
            tables[rid] = list(prefix)
            alloc(rid, rng.randint(4, 60), step)
        # decodes grow a few tables by one block
        for rid in rng.sample(sorted(tables), min(40, len(tables))):
            if free:
                alloc(rid, 1, step)
        # a few finish: their own blocks become cached, the prefix loses a reference
        for rid in rng.sample(sorted(tables), min(6, len(tables))):
            table = tables.pop(rid)
            for b in table:
                refs[b] -= 1
            ev.append(BlockEvent(ts, step, CACHED, rid, tuple(table[8:]), 8, tuple(1 for _ in table[8:]),
                                 tuple(rng.randint(1, 1 << 40) for _ in table[8:])))
            ev.append(BlockEvent(ts, step, FREE, rid, tuple(table), 0, tuple(refs[b] for b in table)))
            free.extend(b for b in table[8:])
            ev.append(RequestEvent(ts, step, rid, FINISHED, 128, 256, 384, 256, "length"))
        used = sum(1 for r in refs if r > 0)
        stored = sum(len(t) for t in tables.values()) * block_size
        ev.append(KVSnapshot(ts, step, num_blocks, block_size, used, 0, num_blocks - used, stored, 7 * len(tables),
                             256 * len(tables)))
        ev.append(StepEnd(ts + 500_000, step, ts, 40 + len(tables), 2048, ((0, 32),),
                          tuple(sorted(tables))[:40], tuple((r, 1) for r in sorted(tables)[:40])))
    return ev


async def bench(num_blocks: int, steps: int, size: tuple[int, int]) -> dict[str, float]:
    events = synthetic_events(num_blocks, steps)
    cursor = ReplayCursor(Timeline.from_events(events, "<synthetic>"), UIModel)
    app = KVScopeApp(replay=cursor, title="render benchmark", deterministic=True)
    update_ms, map_ms, frame_ms, frame_cpu_ms = [], [], [], []
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        block_map = app.query_one(BlockMap)
        region = Region(0, 0, block_map.scrollable_content_region.width, block_map.scrollable_content_region.height)
        for _ in range(steps):
            c0 = time.process_time()
            t0 = time.perf_counter()
            cursor.forward()
            app._dirty = True
            app.sync()
            t1 = time.perf_counter()
            await asyncio.sleep(0)  # let widgets handle any message posted by the update
            app.screen._on_timer_update()  # Textual lays out (if needed) and paints the screen
            t2 = time.perf_counter()
            frame_cpu_ms.append((time.process_time() - c0) * 1e3)
            block_map.render_lines(region)
            t3 = time.perf_counter()
            update_ms.append((t1 - t0) * 1e3)
            frame_ms.append((t2 - t0) * 1e3)
            map_ms.append((t3 - t2) * 1e3)
        rows = block_map.virtual_size.height
    return {
        "blocks": num_blocks, "map_rows": rows, "visible_rows": region.height,
        "update_ms_p50": statistics.median(update_ms), "map_ms_p50": statistics.median(map_ms),
        "frame_ms_p50": statistics.median(frame_ms), "frame_ms_max": max(frame_ms[1:] or frame_ms),
        "frame_cpu_ms_p50": statistics.median(frame_cpu_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", default="200x60", help="terminal WIDTHxHEIGHT")
    args = parser.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    r = asyncio.run(bench(args.blocks, args.steps, (w, h)))
    print(f"block map: {r['blocks']} blocks in {r['map_rows']} rows ({r['visible_rows']} visible), terminal {w}x{h}")
    print(f"update (events -> panels)   p50 {r['update_ms_p50']:6.2f} ms")
    print(f"map render (visible rows)   p50 {r['map_ms_p50']:6.2f} ms")
    print(f"frame (update + paint)      p50 {r['frame_ms_p50']:6.2f} ms   max {r['frame_ms_max']:6.2f} ms"
          f"   goal < 30 ms: {'ok' if r['frame_ms_p50'] < 30 else 'MISSED'}")
    print(f"frame CPU time (this process) p50 {r['frame_cpu_ms_p50']:6.2f} ms   (wall time suffers when other"
          f" processes share the cores)")


if __name__ == "__main__":
    main()
