"""Wall time of the one-shot commands, end to end (process start to exit), e.g. `kvscope kv llama-2-7b --context 4096`.

Usage: python benchmarks/oneshot_startup.py [--runs N]
Prints the median and best wall time of each command over N runs (default 15)
next to a bare `python -c pass`, and exits 1 if the kv median is over 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

BUDGET_S = 0.3


def _kvscope() -> list[str]:
    exe = shutil.which("kvscope", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "kvscope.cli.main"]


def time_command(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    kv = _kvscope()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "kvscope kv llama-2-7b --context 4096": kv + ["kv", "llama-2-7b", "--context", "4096"],
        "kvscope kv deepseek-v3 --json": kv + ["kv", "deepseek-v3", "--json"],
        "kvscope roofline llama-3.1-8b --batch 16": kv + ["roofline", "llama-3.1-8b", "--batch", "16"],
    }
    results = {}
    for name, cmd in commands.items():
        times = time_command(cmd, args.runs)
        results[name] = statistics.median(times)
        print(f"{name:45s} median {statistics.median(times) * 1e3:7.1f} ms   best {min(times) * 1e3:7.1f} ms")
    kv_median = results["kvscope kv llama-2-7b --context 4096"]
    ok = kv_median < BUDGET_S
    print(f"kv budget {BUDGET_S * 1e3:.0f} ms: {'OK' if ok else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
