"""How fast the simulator is: 10,000 chat-like requests through a simulated Llama-3.1-70B on 8 x H100.

Events off (no subscriber) by default; --events subscribes the metrics, as `kvscope bench` runs.
Prompts ~1k tokens (512..1536), outputs ~250 (128..384), Poisson arrivals at --rate requests/s. Prints
the wall time of each part (building the workload, the run), the simulated time and the run's speed
against the simulated device's own (simulated seconds per wall second), and the goal: the whole
simulation under 60 s of wall time.

    .venv/bin/python benchmarks/sim_speed.py [--requests 10000] [--rate 20] [--events] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from kvscope.config.recipe import Recipe
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.inspector.metrics import Metrics

GOAL_S = 60.0


def recipe(requests: int, rate: float) -> Recipe:
    return Recipe.from_dict({
        "name": "sim-speed", "device": "sim", "dtype": "bfloat16",
        "model": {"source": "preset", "name": "llama-3.1-70b"},
        "sim": {"gpu": "H100-80GB", "num_gpus": 8, "tp": 8},
        "scheduler": {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "max_model_len": 4096},
        "workload": {"synthetic": {"num_requests": requests, "prompt_len": {"min": 512, "max": 1536},
                                   "output_len": {"min": 128, "max": 384}, "arrival_rate": rate, "seed": 0}},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals per second")
    ap.add_argument("--profile", action="store_true", help="cProfile the run; print the top 25 functions")
    ap.add_argument("--events", action="store_true", help="events on: a Metrics subscriber (as kvscope bench runs)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bus = EventBus()
    if args.events:
        bus.subscribe(Metrics())
    session = RunSession(recipe(args.requests, args.rate), bus=bus, kernel_events=False)
    build_s = time.perf_counter() - t0
    prof = cProfile.Profile() if args.profile else None
    t1 = time.perf_counter()
    if prof:
        prof.enable()
    session.run()
    if prof:
        prof.disable()
    run_s = time.perf_counter() - t1
    total = build_s + run_s
    reqs = [session.engine.requests[i] for i in session.request_ids]
    out_tokens = sum(r.num_output_tokens for r in reqs)
    sim_s = session.clock_s
    ttft = sorted((r.first_token_ts - r.arrival_ts) / 1e6 for r in reqs)
    print(f"requests {len(reqs)} finished {sum(1 for r in reqs if r.finish_reason)}, {session.steps} steps, "
          f"{out_tokens} output tokens")
    print(f"wall: workload + engine set-up {build_s:.1f} s, run {run_s:.1f} s, total {total:.1f} s "
          f"(goal < {GOAL_S:.0f} s: {'met' if total < GOAL_S else 'NOT met'}, {total / GOAL_S:.2f} x the goal)")
    print(f"simulated: {sim_s:.1f} s of 8xH100 time, {out_tokens / sim_s:.0f} output tok/s, TTFT p50 "
          f"{ttft[len(ttft) // 2]:.0f} ms; simulated seconds per wall second {sim_s / run_s:.1f}; "
          f"{run_s / session.steps * 1e6:.0f} us of wall per step")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
