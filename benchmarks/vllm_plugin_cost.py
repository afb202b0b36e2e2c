"""What kvscope's vLLM plugin costs vLLM: `vllm serve` with the plugin off and on, loaded by `vllm bench serve`
with one workload, in alternating rounds (off, on, off, on, ...), in one run; each server is warmed by one
whole run of the workload (another seed) first. Prints each round and the
medians' ratio on / off (the goal: throughput >= 0.97x).

With the plugin on, a viewer is attached for the whole run (`--viewer`, the default): the relay then also
feeds an SSE reader, which is the plugin's working cost, not only its hooks'.

    .venv/bin/python benchmarks/vllm_plugin_cost.py --num-prompts 64 --input-len 128 --output-len 64 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from serve_processes import vllm_missing, vllm_server
from vllm_bench_serve import Workload, vllm_client

KEYS = ("output_throughput", "request_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms")


def _viewer(url: str, stop: threading.Event) -> threading.Thread:
    """An attached reader of /kvscope/v1/events (what `kvscope attach` does), until `stop`."""
    from kvscope.serve.client.attach_client import RemoteController

    def run() -> None:
        ctl = RemoteController(url, kernels=True).start()
        while not stop.wait(0.2):
            ctl.drain(lambda event: None)
        ctl.stop()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def one_round(plugin: bool, work: Workload, tmp: Path, i: int, flags: list[str], viewer: bool,
              isolate: bool) -> dict:
    server = vllm_server(*flags, plugin=plugin, log=tmp / f"vllm-{plugin}-{i}.log")
    clients = "1" if isolate else None
    if isolate:  # vLLM on CPU 0 (one OpenMP thread), the client and the viewer on CPU 1
        server.pin("0")
    with server as srv:
        warm = Workload(work.num_prompts, work.input_len, work.output_len, seed=1)
        vllm_client(srv.url, warm, tmp / "warm.json", clients)
        stop = threading.Event()
        reader = _viewer(srv.url, stop) if plugin and viewer else None
        result = vllm_client(srv.url, replace(work, seed=10 + i), tmp / f"{'on' if plugin else 'off'}-{i}.json",
                             clients)
        stop.set()
        if reader is not None:
            reader.join(10)
    if result["failed"]:
        raise RuntimeError(f"round {i} (plugin {'on' if plugin else 'off'}): {result['failed']} requests failed")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-viewer", dest="viewer", action="store_false", help="the plugin on, nobody attached")
    parser.add_argument("--isolate", action="store_true", help="vLLM on CPU 0, the client and the viewer on CPU 1")
    args = parser.parse_args()
    if (missing := vllm_missing()) is not None:
        sys.exit(f"vllm_plugin_cost: {missing}")
    work = Workload(args.num_prompts, args.input_len, args.output_len)
    if args.isolate:
        os.sched_setaffinity(0, {1})  # this process (the viewer) beside the client, away from vLLM
    flags = ["--max-num-seqs", str(args.max_num_seqs)]
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.rounds):
            for plugin in (False, True):
                r = one_round(plugin, work, Path(d), i, flags, args.viewer, args.isolate)
                runs[plugin].append(r)
                print(f"round {i} plugin {'on ' if plugin else 'off'}: "
                      + "  ".join(f"{k} {r[k]:.2f}" for k in KEYS), flush=True)
    print("\n| metric | plugin off | plugin on | on / off |\n|---|---|---|---|")
    for key in KEYS:
        off, on = (statistics.median(float(r[key]) for r in runs[p]) for p in (False, True))
        print(f"| {key} | {off:,.2f} | {on:,.2f} | {on / off:.3f} |")


if __name__ == "__main__":
    main()
