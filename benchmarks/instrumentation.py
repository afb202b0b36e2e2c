"""The cost of instrumentation: one workload run with events and NVTX off, and with events +
NVTX ranges + JSONL recording on; prints both throughputs and the ratio (goal: on / off >= 0.98 on the
SmolLM2 shape, >= 0.95 on tiny). Without a tool (nsys) attached, nvtx hands out a do-nothing domain and
the engine makes no NVTX calls at all; under nsys the ranges are live.

    .venv/bin/python benchmarks/instrumentation.py                 # random smollm2-135m shape
    .venv/bin/python benchmarks/instrumentation.py --shape tiny    # worst case: tiny steps
    .venv/bin/python benchmarks/instrumentation.py --recipe recipes/quickstart.yaml

The model is loaded once; runs alternate off / on after a warm-up, and the best runs of
each side are compared (the median ratio is printed too), so a noisy shared machine affects
both sides alike. Throughput is generated tokens
per second of wall time inside RunSession.run() (and per second of process CPU time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kvscope.config.recipe import Recipe, load_recipe
from kvscope.engine.model.loader import load_for_recipe
from kvscope.engine.probe.nvtx_ranges import nvtx_range_hook
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.inspector.export.recording import attach_recorder, make_header


def synthetic_recipe(shape: str, requests: int, max_tokens: int) -> Recipe:
    return Recipe.from_dict({
        "name": f"instrumentation-{shape}",
        "model": {"source": "random", "shape": shape, "seed": 0},
        "device": "auto",
        "cache": {"block_size": 16, "num_blocks": 256, "prefix_caching": True},
        "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 256},
        "sampling": {"max_tokens": max_tokens, "ignore_eos": True},
        "workload": {"synthetic": {"num_requests": requests, "prompt_len": {"min": 32, "max": 96},
                                   "output_len": {"min": max_tokens, "max": max_tokens}, "seed": 0}},
    })


def one_run(recipe: Recipe, loaded, instrumented: bool, out_dir: Path) -> tuple[int, float, float, int]:
    """(generated tokens, wall s, cpu s, events recorded) for one run of the workload."""
    bus = EventBus()
    hook = None
    close = None
    recorder_path = out_dir / "events.jsonl"
    if instrumented:
        hook = nvtx_range_hook()
        close = attach_recorder(bus, recorder_path, make_header(recipe.name, str(loaded.device)))
    session = RunSession(recipe, bus=bus, range_hook=hook, loaded=loaded)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    session.run()
    if close is not None:
        close()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tokens = sum(len(o.token_ids) for o in session.outputs.values())
    events = sum(1 for _ in open(recorder_path)) - 1 if instrumented else 0
    return tokens, wall, cpu, events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", help="a recipe YAML instead of the synthetic random-weights workload")
    parser.add_argument("--shape", default="smollm2-135m", help="random-weights model shape (default smollm2-135m)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="runs per side after the warm-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steadier timings on a shared machine)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.recipe) if args.recipe else synthetic_recipe(args.shape, args.requests, args.max_tokens)
    loaded = load_for_recipe(recipe)
    rows: dict[str, list[tuple[int, float, float, int]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        one_run(recipe, loaded, False, out_dir)  # warm-up (allocator, kernels, caches)
        one_run(recipe, loaded, True, out_dir)
        for i in range(args.repeats):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            for side in order:
                rows[side].append(one_run(recipe, loaded, side == "on", out_dir))

    def rate(side: str, index: int, pick) -> float:
        return pick([r[0] / r[index] for r in rows[side]])

    result = {
        "recipe": recipe.name,
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "tokens_per_run": rows["off"][0][0],
        "events_per_run": rows["on"][0][3],
        "repeats": args.repeats,
        # best of N: the run least disturbed by other load on the machine
        "off_tok_s": round(rate("off", 1, max), 2),
        "on_tok_s": round(rate("on", 1, max), 2),
        "ratio_wall_best": round(rate("on", 1, max) / rate("off", 1, max), 4),
        "ratio_wall_median": round(rate("on", 1, statistics.median) / rate("off", 1, statistics.median), 4),
        "ratio_cpu_best": round(rate("on", 2, max) / rate("off", 2, max), 4),
        "nvtx": nvtx_range_hook() is not None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"recipe {result['recipe']} on {result['device']} ({result['torch_threads']} torch threads): "
              f"{result['tokens_per_run']} tokens, {result['events_per_run']} events per instrumented run, "
              f"{args.repeats} runs per side")
        print(f"off (no events, no NVTX)          {result['off_tok_s']:10.2f} tok/s (best)")
        nvtx = "NVTX ranges" if result["nvtx"] else "no NVTX (no tool attached)"
        print(f"on  (events + JSONL, {nvtx})  {result['on_tok_s']:10.2f} tok/s (best)")
        print(f"ratio on/off: {result['ratio_wall_best']:.4f} wall best-of-{args.repeats}, "
              f"{result['ratio_wall_median']:.4f} wall median, {result['ratio_cpu_best']:.4f} CPU time best"
              f"  (goal >= 0.98 on the SmolLM2 shape, >= 0.95 on tiny)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
