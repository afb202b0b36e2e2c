"""What serving costs: the same workload offline (`LLM.generate`) and through `kvscope serve`, driven by
`kvscope bench serve` (a separate process, as a real client is) in the same run.

    .venv/bin/python benchmarks/serve_overhead.py                      # random smollm2-135m shape
    .venv/bin/python benchmarks/serve_overhead.py --shape tiny --requests 128

Throughput: at unbounded request rate, output tokens/s of the served run (bench serve's definition:
tokens / benchmark duration) over the offline run's (tokens / generate() wall time, model already loaded);
the two sides alternate `--repeats` times after a warm-up and the medians are compared. Latency: at low
load (one request at a time) the client's TTFT minus the engine's own TTFT (arrival -> first token, from the
engine's events) per request: what HTTP, the queue to the engine thread, SSE and the client add; the
median is reported. The prompts are the ones bench serve builds (seeded random dataset, cut to exact token
counts with the server's /tokenize), rebuilt here with the same tokenizer for the offline side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM
from kvscope.engine.model.loader import load_for_recipe
from kvscope.events.records import RequestEvent
from kvscope.events.vocabulary import ARRIVED, FIRST_TOKEN
from kvscope.serve.client.bench_dataset import random_dataset
from kvscope.serve.server.api_server import ServerThread

KVSCOPE = str(Path(sys.executable).parent / "kvscope")


def recipe_for(shape: str, max_num_seqs: int) -> Recipe:
    return Recipe.from_dict({
        "name": f"serve-overhead-{shape}", "model": {"source": "random", "shape": shape, "seed": 0},
        "device": "auto", "cache": {"block_size": 16, "num_blocks": 512, "prefix_caching": False},
        "scheduler": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": 512, "max_model_len": 1024},
        "sampling": {"temperature": 0.0}, "workload": {"prompts": ["-"]},
    })


def bench_serve(url: str, n: int, input_len: int, output_len: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([KVSCOPE, "bench", "serve", "--base-url", url, "--num-prompts", str(n), "--random-input-len",
                        str(input_len), "--random-output-len", str(output_len), "--ignore-eos", "--save-result",
                        "--result-dir", tmp, "--result-filename", "r.json", *extra],
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads((Path(tmp) / "r.json").read_text())


def offline(llm: LLM, prompts: list[str], output_len: int) -> tuple[int, float]:
    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    return sum(len(o.token_ids) for o in outs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--low-load-requests", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = recipe_for(args.shape, args.max_num_seqs)
    loaded = load_for_recipe(recipe)
    llm = LLM(recipe, loaded=loaded)
    tok = llm.tokenizer
    prompts = [r.prompt for r in random_dataset(args.requests, args.input_len, args.output_len, 0.0, 0, 0,
                                                lambda t: tok.encode(t, add_bos=False), tok.decode)]
    print(f"{args.shape} on {loaded.device}, torch threads {torch.get_num_threads()}: {args.requests} requests, "
          f"{args.input_len} prompt + {args.output_len} output tokens, max_num_seqs {args.max_num_seqs}")
    engine_ttft: dict[int, list[int]] = {}

    def on_event(ev) -> None:
        if isinstance(ev, RequestEvent) and ev.what in (ARRIVED, FIRST_TOKEN):
            engine_ttft.setdefault(ev.request_id, []).append(ev.ts)

    with ServerThread(recipe, loaded=loaded) as srv:
        srv.state.engine.engine.bus.subscribe(on_event)
        bench_serve(srv.url, 4, args.input_len, 4, [])  # warm-up both sides
        offline(llm, prompts[:4], 4)
        off_rates, srv_rates = [], []
        for _ in range(args.repeats):
            tokens, wall = offline(llm, prompts, args.output_len)
            off_rates.append(tokens / wall)
            res = bench_serve(srv.url, args.requests, args.input_len, args.output_len, [])
            assert res["completed"] == args.requests and res["total_output_tokens"] == tokens
            srv_rates.append(res["output_throughput"])
        engine_ttft.clear()
        low = bench_serve(srv.url, args.low_load_requests, args.input_len, args.output_len,
                          ["--max-concurrency", "1", "--percentile-metrics", "ttft"])
    ids = sorted(engine_ttft)
    engine_s = [(engine_ttft[i][1] - engine_ttft[i][0]) / 1e9 for i in ids if len(engine_ttft[i]) == 2]
    extra_ms = [(c - e) * 1000 for c, e in zip(low["ttfts"], engine_s)]
    off, served = statistics.median(off_rates), statistics.median(srv_rates)
    print(f"offline  output tok/s: {off:8.1f}   (runs: {', '.join(f'{x:.1f}' for x in off_rates)})")
    print(f"served   output tok/s: {served:8.1f}   (runs: {', '.join(f'{x:.1f}' for x in srv_rates)})")
    print(f"served / offline     : {served / off:8.3f}   (goal >= 0.9)")
    print(f"low load, one request at a time ({len(extra_ms)} requests): client TTFT median "
          f"{statistics.median(low['ttfts']) * 1000:.2f} ms, engine TTFT median "
          f"{statistics.median(engine_s) * 1000:.2f} ms")
    print(f"client TTFT - engine TTFT: median {statistics.median(extra_ms):.2f} ms, max {max(extra_ms):.2f} ms "
          f"(goal < 5 ms median)")


if __name__ == "__main__":
    main()
