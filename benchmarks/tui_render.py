"""Benchmark: can the TUI keep up with a 10,000-block KV pool?

Builds a synthetic recording (no engine, no torch): a pool of NUM_BLOCKS blocks, a few hundred
requests holding blocks (some shared through prefix hits, some cached after finishing), and
steps that each allocate, share and free blocks. The app replays it step by step in a headless
terminal; per refresh it reports:

    update   folding the step's events into the EngineView/Metrics and pushing them into the panels
    paint    message handling + Textual laying out and rendering the changed lines of the screen
    encode   turning the screen update into the terminal's escape sequences (what a real driver
             writes; the headless driver skips it, so the benchmark does it itself)
    frame    update + paint + encode, as wall time and as this process's CPU time (the fair number
             on a shared machine); p50, p95 and max over the steps
    map      rendering every visible row of the block map from scratch (its Line API render plus
             Textual's styling of the rows, nothing cached), for scale

The workload is a worst case for the map: blocks come off a shuffled free list, so a row of ~110
blocks holds ~100 colour runs, and each step touches most visible rows.

Goal: frame < 30 ms per refresh. Run: .venv/bin/python benchmarks/tui_render.py [--blocks N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from textual._compositor import CompositorUpdate
from textual.geometry import Region

from kvscope.events.records import BlockEvent, KVSnapshot, RequestEvent, RunInfo, StepBegin, StepEnd
from kvscope.events.vocabulary import ALLOC, ARRIVED, CACHED, FINISHED, FREE, PREFIX_HIT, SCHEDULED
from kvscope.inspector.export.replay import ReplayCursor, Timeline
from kvscope.tui.app import KVScopeApp
from kvscope.tui.model import UIModel
from kvscope.tui.widgets.block_map import BlockMap

WARMUP_STEPS = 3  # the first frames lay out the screen and fill caches


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
    events = synthetic_events(num_blocks, steps + WARMUP_STEPS)
    cursor = ReplayCursor(Timeline.from_events(events, "<synthetic>"), UIModel)
    cursor.goto(cursor.last_position)  # as `kvscope replay` does on loading: the replay checkpoints are taken now
    cursor.goto(0)
    app = KVScopeApp(replay=cursor, title="render benchmark", deterministic=True)
    encode_s: list[float] = []

    def encode(screen, update) -> None:  # what App._display does on a real terminal, less the write
        if isinstance(update, CompositorUpdate):
            e0 = time.perf_counter()
            update.render_segments(app.console)
            encode_s.append(time.perf_counter() - e0)

    times: dict[str, list[float]] = {k: [] for k in ("update", "paint", "encode", "frame", "frame_cpu", "map")}
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        app._display = encode
        block_map = app.query_one(BlockMap)
        region = Region(0, 0, block_map.size.width, block_map.size.height)
        for i in range(steps + WARMUP_STEPS):
            c0 = time.process_time()
            t0 = time.perf_counter()
            cursor.forward()
            app.sync()
            t1 = time.perf_counter()
            await asyncio.sleep(0)  # let widgets handle any message posted by the update
            encode_s.clear()
            app.screen._on_timer_update()  # Textual lays out (if needed), renders and hands over the update
            t2 = time.perf_counter()
            frame_cpu = time.process_time() - c0
            block_map._styles_cache.clear()
            block_map.render_lines(region)
            t3 = time.perf_counter()
            if i < WARMUP_STEPS:
                continue
            times["update"].append(t1 - t0)
            times["paint"].append(t2 - t1 - sum(encode_s))
            times["encode"].append(sum(encode_s))
            times["frame"].append(t2 - t0)
            times["frame_cpu"].append(frame_cpu)
            times["map"].append(t3 - t2)
        rows = block_map.virtual_size.height
    ms = {k: sorted(x * 1e3 for x in v) for k, v in times.items()}
    return {"blocks": num_blocks, "map_rows": rows, "visible_rows": region.height,
            **{f"{k}_p50": statistics.median(v) for k, v in ms.items()},
            "frame_p95": ms["frame"][int(0.95 * (len(ms["frame"]) - 1))], "frame_max": ms["frame"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", default="200x60", help="terminal WIDTHxHEIGHT")
    args = parser.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    r = asyncio.run(bench(args.blocks, args.steps, (w, h)))
    print(f"block map: {r['blocks']} blocks in {r['map_rows']} rows ({r['visible_rows']} visible), terminal {w}x{h},"
          f" {args.steps} steps")
    print(f"update (events -> panels)     p50 {r['update_p50']:6.2f} ms")
    print(f"paint (layout + render)       p50 {r['paint_p50']:6.2f} ms")
    print(f"encode (escape sequences)     p50 {r['encode_p50']:6.2f} ms")
    print(f"frame (update+paint+encode)   p50 {r['frame_p50']:6.2f} ms   p95 {r['frame_p95']:6.2f} ms"
          f"   max {r['frame_max']:6.2f} ms   goal < 30 ms: {'ok' if r['frame_p50'] < 30 else 'MISSED'}")
    print(f"frame CPU time (this process) p50 {r['frame_cpu_p50']:6.2f} ms   (wall time suffers when other"
          f" processes share the cores)")
    print(f"block map, all visible rows from scratch   p50 {r['map_p50']:6.2f} ms")


if __name__ == "__main__":
    main()
