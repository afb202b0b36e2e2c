"""Prefill/decode disaggregation against one colocated engine, in one run: recipes/pd-disaggregation.yaml.

    .venv/bin/python benchmarks/pd.py                         # the recipe on SmolLM2
    .venv/bin/python benchmarks/pd.py --model tiny            # a quick look on the tiny random model

Variants: colocated (one engine, torch threads = --cpus), disaggregated over Ray (a prefill actor and a
decode actor with --cpus / 2 CPUs each, stepping at the same time) and, with --inprocess, the in-process
deployment. Per variant: output throughput, TTFT and ITL p50 / p99 as a client sees them (TTFT includes the
transfer), and for a deployment the KV bytes and transfer time per request. The transport's bytes/s (all
bytes over all transfer time, measured by the decode side from asking to landing) is set against a plain
numpy copy of a buffer of the mean transfer's size on this machine, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kvscope.cli.deployment_report import DeploymentWatch
from kvscope.config.recipe import load_recipe
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.inspector.human_units import human_bytes
from kvscope.inspector.metrics import Metrics

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "pd-disaggregation.yaml"


def numpy_copy_bytes_per_s(nbytes: int, seconds: float = 1.0) -> float:
    """A plain copy of an nbytes buffer into another (np.copyto), repeated for about `seconds`: bytes/s."""
    src = np.random.default_rng(0).integers(0, 255, size=max(nbytes, 1), dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(dst, src)
        n += 1
    return n * src.nbytes / (time.perf_counter() - t0)


def run_variant(recipe, cpus: int) -> dict:
    torch.set_num_threads(cpus)
    bus = EventBus()
    metrics = bus.subscribe(Metrics())
    session = RunSession(recipe, bus=bus, kernel_events=False)
    watch = DeploymentWatch.attach(session, metrics) if recipe.deployment.disaggregated else None
    t0 = time.perf_counter()
    try:
        session.run()
    finally:
        session.close()
    wall = time.perf_counter() - t0
    summary = watch.run_summary() if watch is not None else metrics.summary()
    out = {"wall_s": wall, "requests": summary.finished, "tokens": summary.generated_tokens,
           "throughput": summary.throughput_tok_s, "ttft_p50": summary.ttft_ms.p50, "ttft_p99": summary.ttft_ms.p99,
           "itl_p50": summary.itl_ms.p50, "itl_p99": summary.itl_ms.p99, "failures": session.failure_report()}
    if watch is not None:
        t = watch.transfers.summary()
        out.update(transfers=t.transfers, bytes_per_request=t.bytes_per_transfer, transfer_ms_p50=t.transfer_ms.p50,
                   transfer_ms_mean=t.transfer_ms.mean, transfer_ms_p99=t.transfer_ms.p99, send_ms_p50=t.send_ms.p50,
                   transfer_share_of_ttft=t.share_of(summary.ttft_ms), transport_bytes_per_s=t.bytes_per_s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(RECIPE))
    ap.add_argument("--model", default="", help="'tiny' for the tiny random model (default: the recipe's)")
    ap.add_argument("--cpus", type=int, default=2, help="the machine's CPUs: colocated threads; split for Ray")
    ap.add_argument("--inprocess", action="store_true", help="also the in-process deployment")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()
    base = load_recipe(args.recipe)
    if args.model == "tiny":
        base = base.with_overrides({"model": {"source": "random", "shape": "tiny", "seed": 0}})
    per_engine = max(args.cpus // 2, 1)
    variants = {"colocated": base.with_overrides({"deployment": {"mode": "colocated"}}, name="colocated")}
    if args.inprocess:
        variants["disagg-inprocess"] = base.with_overrides(
            {"deployment": {"mode": "disaggregated", "transport": "inprocess"}}, name="disagg-inprocess")
    variants["disagg-ray"] = base.with_overrides(
        {"deployment": {"mode": "disaggregated", "transport": "ray", "cpus_per_engine": per_engine}},
        name="disagg-ray")
    results = {}
    for name, recipe in variants.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_variant(recipe, args.cpus if name == "colocated" else per_engine)
    mean_bytes = max((r.get("bytes_per_request", 0) for r in results.values()), default=0)
    copy_bps = numpy_copy_bytes_per_s(int(mean_bytes)) if mean_bytes else 0.0

    print(f"recipe {base.source}, model {base.model!r}, {args.cpus} CPUs "
          f"(colocated: {args.cpus} threads; Ray: 2 actors x {per_engine} CPU)")
    print(f"{'variant':18} {'tok/s':>7} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>8} {'KV/req':>10} "
          f"{'xfer p50':>9} {'p99':>7} {'share':>6}")
    for name, r in results.items():
        line = (f"{name:18} {r['throughput']:7.1f} {r['ttft_p50']:9.1f} {r['ttft_p99']:8.1f} {r['itl_p50']:8.1f} "
                f"{r['itl_p99']:8.1f}")
        if "transfers" in r:
            line += (f" {human_bytes(r['bytes_per_request']):>10} {r['transfer_ms_p50']:9.2f} "
                     f"{r['transfer_ms_p99']:7.2f} {r['transfer_share_of_ttft']:6.1%}")
        print(line)
        if r["failures"]:
            print(f"  failures: {r['failures']}")
    col = results["colocated"]
    for name, r in results.items():
        if name == "colocated":
            continue
        print(f"{name} / colocated: throughput {r['throughput'] / col['throughput']:.2f}x, "
              f"ITL p99 {r['itl_p99'] / col['itl_p99']:.2f}x, ITL p50 {r['itl_p50'] / col['itl_p50']:.2f}x, "
              f"TTFT p50 {r['ttft_p50'] / col['ttft_p50']:.2f}x")
        if copy_bps and r.get("transport_bytes_per_s"):
            print(f"  transport {human_bytes(r['transport_bytes_per_s'])}/s vs numpy copy of "
                  f"{human_bytes(mean_bytes)} {human_bytes(copy_bps)}/s: {r['transport_bytes_per_s'] / copy_bps:.3f}x "
                  f"(sender's read p50 {r['send_ms_p50']:.2f} ms of a {r['transfer_ms_p50']:.2f} ms transfer)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "numpy_copy_bytes_per_s": copy_bps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
