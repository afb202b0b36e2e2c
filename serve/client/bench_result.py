"""What `kvscope bench serve` reports, with `vllm bench serve`'s definitions, labels and JSON keys.

TTFT: send to first chunk. TPOT per request: (latency - TTFT) / (output tokens - 1), requests of one token
left out. ITL: every gap between chunks. E2EL: latency. Goodput: requests/s of those meeting every SLO of
`--goodput` (ms). Percentiles interpolate linearly (numpy's default). Throughputs divide by the benchmark's
duration. Beyond vLLM: the deltas of the server's /metrics over the run (preemptions, prefix-cache hit
rate, peak KV-cache use from samples taken during the run), when the server has vLLM's metrics.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from kvscope.inspector.metrics import percentile
from kvscope.serve.client.bench_client import RequestResult

METRICS = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
           "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}
TITLE_WIDTH = 50


def _title(text: str, fill: str) -> str:
    return "{s:{c}^{n}}".format(s=text, n=TITLE_WIDTH, c=fill)


def _row(label: str, value: Any, fmt: str = ".2f") -> str:
    return f"{label:<40} {value:<10{fmt}}"


def calculate(results: Sequence[RequestResult], duration: float, goodput: dict[str, float],
              percentile_metrics: Sequence[str], metric_percentiles: Sequence[float]) -> dict[str, Any]:
    """The result dict (vLLM's keys: completed, request_throughput, mean_ttft_ms, p99_itl_ms, ...)."""
    ok = [r for r in results if r.success]
    ms: dict[str, list[float]] = {"ttft": [], "tpot": [], "itl": [], "e2el": []}
    good = 0
    for r in ok:
        ms["ttft"].append(r.ttft * 1000)
        ms["e2el"].append(r.latency * 1000)
        ms["itl"].extend(x * 1000 for x in r.itl)
        tpot = (r.latency - r.ttft) / (r.output_tokens - 1) * 1000 if r.output_tokens > 1 else None
        if tpot is not None:
            ms["tpot"].append(tpot)
        slo = {"ttft": r.ttft * 1000, "tpot": tpot or 0.0, "e2el": r.latency * 1000}
        if goodput and all(slo[k] <= v for k, v in goodput.items()):
            good += 1
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    d = duration if duration > 0 else math.inf
    out: dict[str, Any] = {
        "duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / d, "request_goodput": good / d if goodput else None,
        "output_throughput": total_out / d, "total_token_throughput": (total_in + total_out) / d,
        "input_lens": [r.prompt_len for r in results], "output_lens": [r.output_tokens for r in results],
        "ttfts": [r.ttft for r in results], "itls": [r.itl for r in results],
        "generated_texts": [r.generated_text for r in results], "errors": [r.error for r in results],
    }
    for m in METRICS:
        xs = sorted(ms[m])
        out[f"mean_{m}_ms"] = statistics.fmean(xs) if xs else 0.0
        out[f"median_{m}_ms"] = percentile(xs, 50) if xs else 0.0
        out[f"std_{m}_ms"] = statistics.pstdev(xs) if xs else 0.0
        for p in metric_percentiles:
            out[f"p{_p(p)}_{m}_ms"] = percentile(xs, p) if xs else 0.0
    out["_percentile_metrics"] = list(percentile_metrics)
    out["_metric_percentiles"] = list(metric_percentiles)
    return out


def _p(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def format_report(result: dict[str, Any], max_concurrency: int | None, server: dict[str, Any] | None) -> str:
    lines = [_title(" Serving Benchmark Result ", "="),
             _row("Successful requests:", result["completed"], ""),
             _row("Failed requests:", result["failed"], "")]
    if max_concurrency is not None:
        lines.append(_row("Maximum request concurrency:", max_concurrency, ""))
    lines += [_row("Benchmark duration (s):", result["duration"]),
              _row("Total input tokens:", result["total_input_tokens"], ""),
              _row("Total generated tokens:", result["total_output_tokens"], ""),
              _row("Request throughput (req/s):", result["request_throughput"])]
    if result["request_goodput"] is not None:
        lines.append(_row("Request goodput (req/s):", result["request_goodput"]))
    lines += [_row("Output token throughput (tok/s):", result["output_throughput"]),
              _row("Total Token throughput (tok/s):", result["total_token_throughput"])]
    for m in result["_percentile_metrics"]:
        name = m.upper()
        lines.append(_title(METRICS[m], "-"))
        lines.append(_row(f"Mean {name} (ms):", result[f"mean_{m}_ms"]))
        lines.append(_row(f"Median {name} (ms):", result[f"median_{m}_ms"]))
        for p in result["_metric_percentiles"]:
            lines.append(_row(f"P{_p(p)} {name} (ms):", result[f"p{_p(p)}_{m}_ms"]))
    if server:
        lines.append(_title("Server /metrics (deltas over the run)", "-"))
        lines.append(_row("Preemptions:", server["preemptions"], ".0f"))
        rate = server["prefix_cache_hit_rate"]
        lines.append(_row("Prefix cache hit rate (%):", rate * 100 if rate is not None else "n/a",
                          ".2f" if rate is not None else ""))
        lines.append(_row("Peak KV cache usage (%):", server["peak_kv_cache_usage"] * 100))
    lines.append("=" * TITLE_WIDTH)
    return "\n".join(lines)


def json_result(result: dict[str, Any], header: dict[str, Any], server: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(header)
    out.update({k: v for k, v in result.items() if not k.startswith("_")})
    if server:
        out["server_metrics"] = server
    return out
