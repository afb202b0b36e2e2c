"""`kvscope bench serve`: `vllm bench serve`'s load generator and report against any OpenAI-compatible server.

BenchServeArgs carries vLLM's option names and defaults; run_bench_serve builds the dataset (cut to exact
token counts with the server's /tokenize when it has one), runs the load (kvscope.serve.client.bench_client)
inside a MetricsWatch, prints the report and optionally saves the JSON result. `api_key` (--api-key, else
OPENAI_API_KEY, as `vllm bench serve` reads it) goes with every request as a Bearer token.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from kvscope.errors import KVScopeError
from kvscope.serve.client.auth_header import auth_headers
from kvscope.serve.client.bench_client import run_load
from kvscope.serve.client.bench_dataset import SampleRequest, prefix_repetition_dataset, random_dataset
from kvscope.serve.client.bench_result import METRICS, calculate, format_report, json_result
from kvscope.serve.client.bench_scrape import MetricsWatch


@dataclass(slots=True)
class BenchServeArgs:
    base_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    endpoint: str = "/v1/completions"
    model: str | None = None
    dataset_name: str = "random"
    num_prompts: int = 1000
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    random_prefix_len: int = 0
    prefix_repetition_prefix_len: int = 256
    prefix_repetition_suffix_len: int = 256
    prefix_repetition_num_prefixes: int = 10
    prefix_repetition_output_len: int = 128
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ignore_eos: bool = False
    goodput: list[str] = field(default_factory=list)
    percentile_metrics: str = "ttft,tpot,itl"
    metric_percentiles: str = "99"
    seed: int = 0
    save_result: bool = False
    result_dir: str | None = None
    result_filename: str | None = None
    api_key: str | None = None

    @property
    def url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.api_key)


def parse_goodput(items: list[str]) -> dict[str, float]:
    """--goodput ttft:MS tpot:MS e2el:MS -> {"ttft": MS, ...} (KVScopeError naming a bad item)."""
    out: dict[str, float] = {}
    for item in items:
        for part in item.split():
            name, _, value = part.partition(":")
            if name not in ("ttft", "tpot", "e2el"):
                raise KVScopeError(f"--goodput: {part!r}: the metric must be ttft, tpot or e2el")
            try:
                ms = float(value)
            except ValueError:
                raise KVScopeError(f"--goodput: {part!r}: expected NAME:MILLISECONDS") from None
            if ms < 0:
                raise KVScopeError(f"--goodput: {part!r}: milliseconds must be >= 0")
            out[name] = ms
    return out


def check_args(a: BenchServeArgs) -> tuple[dict[str, float], list[str], list[float]]:
    if a.dataset_name not in ("random", "prefix_repetition"):
        raise KVScopeError(f"--dataset-name: expected random or prefix_repetition, got {a.dataset_name!r}")
    if not a.endpoint.startswith("/"):
        raise KVScopeError(f"--endpoint: expected a path such as /v1/completions, got {a.endpoint!r}")
    for name in ("num_prompts", "random_input_len", "random_output_len", "prefix_repetition_output_len",
                 "prefix_repetition_num_prefixes"):
        if getattr(a, name) < 1:
            raise KVScopeError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(a, name)}")
    if not 0 <= a.random_range_ratio < 1:
        raise KVScopeError(f"--random-range-ratio: expected [0, 1), got {a.random_range_ratio}")
    if not a.request_rate > 0:
        raise KVScopeError(f"--request-rate: must be > 0 (inf: all at once), got {a.request_rate}")
    if not a.burstiness > 0:
        raise KVScopeError(f"--burstiness: must be > 0, got {a.burstiness}")
    if a.max_concurrency is not None and a.max_concurrency < 1:
        raise KVScopeError(f"--max-concurrency: must be at least 1, got {a.max_concurrency}")
    metrics = [m.strip() for m in a.percentile_metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise KVScopeError(f"--percentile-metrics: unknown {bad} (known: {', '.join(METRICS)})")
    try:
        percentiles = [float(p) for p in a.metric_percentiles.split(",") if p.strip()]
    except ValueError:
        raise KVScopeError(f"--metric-percentiles: expected numbers such as 50,90,99, got "
                           f"{a.metric_percentiles!r}") from None
    if any(not 0 < p < 100 for p in percentiles):
        raise KVScopeError(f"--metric-percentiles: each must be in (0, 100), got {a.metric_percentiles!r}")
    return parse_goodput(a.goodput), metrics, percentiles


def _server_tokenizer(url: str, model: str, headers: dict[str, str]) -> tuple[Any, Any]:
    """/tokenize and /detokenize of the server, when it has them (vLLM's and kvscope's do)."""
    client = httpx.Client(timeout=30, headers=headers)
    try:
        r = client.post(url + "/tokenize", json={"model": model, "prompt": "probe", "add_special_tokens": False})
        if r.status_code != 200 or "tokens" not in r.json():
            client.close()
            return None, None
    except (httpx.HTTPError, ValueError):
        client.close()
        return None, None

    def tokenize(text: str) -> list[int]:
        return client.post(url + "/tokenize", json={"model": model, "prompt": text,
                                                    "add_special_tokens": False}).json()["tokens"]

    def detokenize(ids: list[int]) -> str:
        return client.post(url + "/detokenize", json={"model": model, "tokens": ids}).json()["prompt"]

    return tokenize, detokenize


def _first_model(url: str, headers: dict[str, str]) -> str:
    try:
        data = httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["data"]
        return data[0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise KVScopeError(f"--model: not given, and {url}/v1/models did not name one ({exc})") from None


def build_requests(a: BenchServeArgs, model: str) -> list[SampleRequest]:
    tok, detok = _server_tokenizer(a.url, model, a.headers)
    if a.dataset_name == "random":
        return random_dataset(a.num_prompts, a.random_input_len, a.random_output_len, a.random_range_ratio,
                              a.random_prefix_len, a.seed, tok, detok)
    return prefix_repetition_dataset(a.num_prompts, a.prefix_repetition_prefix_len, a.prefix_repetition_suffix_len,
                                     a.prefix_repetition_num_prefixes, a.prefix_repetition_output_len, a.seed,
                                     tok, detok)


async def _run(a: BenchServeArgs, model: str, requests: list[SampleRequest]) -> tuple[Any, float, Any]:
    async with MetricsWatch(a.url, a.headers) as watch:
        results, duration = await run_load(a.url, a.endpoint, model, requests, request_rate=a.request_rate,
                                           burstiness=a.burstiness, max_concurrency=a.max_concurrency,
                                           ignore_eos=a.ignore_eos, seed=a.seed, headers=a.headers)
    return results, duration, watch.summary()


def run_bench_serve(a: BenchServeArgs, echo: Any = print) -> dict[str, Any]:
    """Run the benchmark, print its report; returns the JSON result (also saved with --save-result)."""
    goodput, metrics, percentiles = check_args(a)
    try:
        r = httpx.get(a.url + "/v1/models", headers=a.headers, timeout=10)
    except httpx.HTTPError as exc:
        raise KVScopeError(f"--base-url: cannot reach {a.url} ({type(exc).__name__})") from None
    if r.status_code == 401:
        raise KVScopeError(f"--api-key: {a.url} refused the key given" if a.api_key else
                           f"--api-key: {a.url} wants an API key (or set OPENAI_API_KEY)")
    model = a.model or _first_model(a.url, a.headers)
    requests = build_requests(a, model)
    echo(f"kvscope bench serve: {len(requests)} requests to {a.url}{a.endpoint} (model {model}, request rate "
         f"{a.request_rate}, burstiness {a.burstiness}, max concurrency {a.max_concurrency})")
    results, duration, server = asyncio.run(_run(a, model, requests))
    result = calculate(results, duration, goodput, metrics, percentiles)
    echo(format_report(result, a.max_concurrency, server))
    errors = [r.error for r in results if not r.success]
    if errors:
        echo(f"{len(errors)} requests failed; the first: {errors[0]}")
    header = {"date": datetime.now().strftime("%Y%m%d-%H%M%S"), "backend": "openai-chat" if "chat" in a.endpoint
              else "openai", "model_id": model, "base_url": a.url, "endpoint": a.endpoint,
              "dataset_name": a.dataset_name, "num_prompts": a.num_prompts,
              "request_rate": a.request_rate if math.isfinite(a.request_rate) else "inf",
              "burstiness": a.burstiness, "max_concurrency": a.max_concurrency}
    out = json_result(result, header, server)
    if a.save_result:
        name = a.result_filename or (f"openai-{a.request_rate}qps-concurrency{a.max_concurrency}-"
                                     f"{model.replace('/', '_')}-{header['date']}.json")
        path = Path(a.result_dir or ".") / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise KVScopeError(f"--save-result: cannot write {path}: {exc.strerror or exc}") from None
        echo(f"saved {path}")
    return out
