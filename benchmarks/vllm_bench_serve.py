"""`vllm bench serve` (vLLM's own client) and `kvscope bench serve` against the same `kvscope serve`, side by side.

Starts `kvscope serve smollm2 --max-num-seqs 64`, warms it (one whole run, another seed), then runs the two
clients in turn (`--rounds` times each, alternating which goes first) with the same workload: vLLM's random
dataset, greedy, EOS ignored. Prints each run, both
reports' headline numbers and kvscope's / vLLM's ratio for each, and the failed requests of every run.
With `--against-vllm` it also serves the same weights with `vllm serve` (same flags) and loads it with
`vllm bench serve`: the engines side by side, measured by one client.

    .venv/bin/python benchmarks/vllm_bench_serve.py --num-prompts 128 --input-len 128 --output-len 64
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from serve_processes import (
    SERVED_NAME,
    SMOLLM2_HF,
    VLLM_BIN,
    kvscope_server,
    pinned,
    vllm_env,
    vllm_missing,
    vllm_server,
)

HEADLINES = ("client_cpu_s", "request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
             "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms")
COUNTS = ("completed", "failed", "total_input_tokens", "total_output", "total_output_tokens")


@dataclass(frozen=True, slots=True)
class Workload:
    num_prompts: int
    input_len: int
    output_len: int
    max_concurrency: int | None = None
    seed: int = 0

    def flags(self) -> list[str]:
        """The flags both clients share (vLLM's names)."""
        flags = ["--model", SERVED_NAME, "--dataset-name", "random", "--num-prompts", str(self.num_prompts),
                 "--random-input-len", str(self.input_len), "--random-output-len", str(self.output_len),
                 "--ignore-eos", "--seed", str(self.seed), "--percentile-metrics", "ttft,tpot,itl,e2el"]
        return flags + (["--max-concurrency", str(self.max_concurrency)] if self.max_concurrency else [])


def vllm_client(url: str, work: Workload, out: Path, cpus: str | None = None) -> dict:
    """One `vllm bench serve` run (on `cpus`, if given); its saved JSON result."""
    argv = [*pinned(cpus), str(VLLM_BIN), "bench", "serve", "--backend", "openai", "--base-url", url, "--tokenizer",
            str(SMOLLM2_HF), "--temperature", "0", "--disable-tqdm", "--save-result", "--result-dir",
            str(out.parent), "--result-filename", out.name, *work.flags()]
    cpu = _run(argv, vllm_env())
    return {**json.loads(out.read_text()), "client_cpu_s": cpu}


def kvscope_client(url: str, work: Workload, out: Path, cpus: str | None = None) -> dict:
    """One `kvscope bench serve` run (on `cpus`, if given); its saved JSON result."""
    argv = [*pinned(cpus), sys.executable, "-m", "kvscope.cli.main", "bench", "serve", "--base-url", url,
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name, *work.flags()]
    cpu = _run(argv, None)
    return {**json.loads(out.read_text()), "client_cpu_s": cpu}


def _run(argv: Sequence[str], env: dict[str, str] | None) -> float:
    """Run a client; the CPU seconds it used (user + system: what it took from the cores the server runs on)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def rounds(url: str, work: Workload, n: int, tmp: Path, cpus: str | None = None) -> dict[str, list[dict]]:
    """n runs of each client, alternating (vLLM's first in even rounds, kvscope's in odd), on the server at url.
    Each round has its own seed: both clients' prompts are new to the server's prefix cache."""
    runs: dict[str, list[dict]] = {"vllm": [], "kvscope": []}
    for i in range(n):
        order = (("vllm", vllm_client), ("kvscope", kvscope_client))
        fresh = replace(work, seed=work.seed + 10 + i)  # prompts no earlier run sent: no prefix-cache carry-over
        for name, client in order if i % 2 == 0 else order[::-1]:
            r = client(url, fresh, tmp / f"{name}-{i}.json", cpus)
            runs[name].append(r)
            print(f"round {i} {name + ' bench serve':<19} output tok/s {r['output_throughput']:8.2f}  median TTFT "
                  f"{r['median_ttft_ms']:9.1f} ms  median ITL {r['median_itl_ms']:7.1f} ms  failed {r['failed']}  "
                  f"client CPU {r['client_cpu_s']:.1f} s", flush=True)
    return runs


def table(a: list[dict], b: list[dict], a_name: str, b_name: str) -> list[str]:
    """Markdown rows: each headline's median over runs for a and b, and b / a."""
    rows = [f"| metric | {a_name} | {b_name} | {b_name} / {a_name} |", "|---|---|---|---|"]
    for key in COUNTS + HEADLINES:
        if key not in a[0] or key not in b[0]:
            continue
        x, y = (statistics.median(float(r[key]) for r in runs) for runs in (a, b))
        ratio = f"{y / x:.3f}" if x else ("1.000" if y == x else "-")
        rows.append(f"| {key} | {x:,.2f} | {y:,.2f} | {ratio} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--against-vllm", action="store_true", help="also load `vllm serve` with vLLM's client")
    parser.add_argument("--isolate", action="store_true",
                        help="server on CPU 0 with one torch thread, clients on CPU 1: neither client's own work "
                             "slows the server it measures")
    args = parser.parse_args()
    if (missing := vllm_missing()) is not None:
        sys.exit(f"vllm_bench_serve: {missing}")
    work = Workload(args.num_prompts, args.input_len, args.output_len, args.max_concurrency)
    warm = Workload(args.num_prompts, args.input_len, args.output_len, args.max_concurrency, seed=1)  # a whole
    # run first, discarded: the server's first batches of each size pay one-time costs (allocations, programs)
    seqs = ["--max-num-seqs", str(args.max_num_seqs)]
    server = kvscope_server(SERVED_NAME, *seqs, *(["--threads", "1"] if args.isolate else []))
    if args.isolate:
        server.pin("0")
    clients = "1" if args.isolate else None
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with server as srv:
            kvscope_client(srv.url, warm, tmp / "warm.json")
            runs = rounds(srv.url, work, args.rounds, tmp, clients)
        where = " (server on CPU 0, one thread; clients on CPU 1)" if args.isolate else ""
        print(f"## Two clients, one `kvscope serve smollm2 {' '.join(seqs)}`{where} ({args.rounds} runs each, "
              f"medians)\n")
        print("\n".join(table(runs["vllm"], runs["kvscope"], "vllm bench serve", "kvscope bench serve")))
        if args.against_vllm:
            baseline = vllm_server(*seqs, log=tmp / "vllm.log")
            if args.isolate:  # the same one core, one OpenMP thread
                baseline.pin("0")
            with baseline as srv:
                vllm_client(srv.url, warm, tmp / "warm-vllm.json", clients)
                on_vllm = [vllm_client(srv.url, work, tmp / f"on-vllm-{i}.json", clients) for i in range(args.rounds)]
            print(f"\n## One client (`vllm bench serve`), two servers with {' '.join(seqs)}\n")
            print("\n".join(table(on_vllm, runs["vllm"], "vllm serve", "kvscope serve")))


if __name__ == "__main__":
    main()
