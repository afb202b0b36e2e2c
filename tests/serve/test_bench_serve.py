"""`kvscope bench serve` against a real kvscope server (tiny random model) and against a bare OpenAI-style
server that has neither /tokenize nor /metrics nor usage in its streams.

Oracles: the server's own /metrics counters (tokens generated, requests finished) for the client's
totals; the SLO definitions for goodput (everything meets a huge SLO, nothing meets a zero one); the
request rate for the run's duration.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from kvscope.cli.main import main
from kvscope.engine.llm import as_recipe
from kvscope.serve.client.bench_client import arrival_gaps
from kvscope.serve.server.api_server import ServerThread, free_port

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 128, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "max_model_len": 128}}
LABELS = ("============ Serving Benchmark Result ============", "Successful requests:", "Benchmark duration (s):",
          "Total input tokens:", "Total generated tokens:", "Request throughput (req/s):",
          "Request goodput (req/s):", "Output token throughput (tok/s):", "Total Token throughput (tok/s):",
          "---------------Time to First Token----------------", "Mean TTFT (ms):", "Median TTFT (ms):",
          "P99 TTFT (ms):", "-----Time per Output Token (excl. 1st token)------", "Mean TPOT (ms):",
          "---------------Inter-token Latency----------------", "Mean ITL (ms):", "P50 ITL (ms):",
          "----------------End-to-end Latency----------------", "Mean E2EL (ms):", "Preemptions:",
          "Prefix cache hit rate (%):", "Peak KV cache usage (%):")


@pytest.fixture(scope="module")
def server():
    with ServerThread(as_recipe(RECIPE)) as srv:
        yield srv


def bench(capsys, tmp_path, *args: str) -> tuple[str, dict]:
    code = main(["bench", "serve", *args, "--save-result", "--result-dir", str(tmp_path),
                 "--result-filename", "r.json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return out, json.loads((tmp_path / "r.json").read_text())


def test_report_labels_json_keys_and_totals_match_the_servers_metrics(server, capsys, tmp_path):
    out, result = bench(capsys, tmp_path, "--base-url", server.url, "--num-prompts", "12", "--random-input-len",
                        "20", "--random-output-len", "6", "--ignore-eos", "--max-concurrency", "4",
                        "--goodput", "ttft:1000000", "tpot:1000000", "--percentile-metrics", "ttft,tpot,itl,e2el",
                        "--metric-percentiles", "50,99")
    for label in LABELS:
        assert label in out, label
    assert result["completed"] == 12 and result["failed"] == 0
    assert result["input_lens"] == [20] * 12  # cut to exact token counts with the server's /tokenize
    assert result["total_output_tokens"] == 12 * 6 == result["server_metrics"]["generation_tokens"]
    assert result["server_metrics"]["prompt_tokens"] == 12 * 21  # the tiny tokenizer adds BOS
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    for key in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "p50_itl_ms", "mean_tpot_ms", "mean_e2el_ms",
                "std_ttft_ms", "output_throughput", "total_token_throughput", "duration", "max_concurrency"):
        assert key in result, key
    assert result["mean_ttft_ms"] <= result["mean_e2el_ms"]
    assert result["output_lens"] == [6] * 12
    assert all(len(itl) <= 5 for itl in result["itls"])  # 6 tokens: at most 5 gaps between chunks
    assert 0 < result["server_metrics"]["peak_kv_cache_usage"] <= 1


def test_zero_slo_means_zero_goodput_and_prefix_repetition_hits_the_cache(server, capsys, tmp_path):
    _, result = bench(capsys, tmp_path, "--base-url", server.url, "--endpoint", "/v1/chat/completions",
                      "--dataset-name", "prefix_repetition", "--num-prompts", "8",
                      "--prefix-repetition-prefix-len", "32", "--prefix-repetition-suffix-len", "4",
                      "--prefix-repetition-num-prefixes", "1", "--prefix-repetition-output-len", "3",
                      "--max-concurrency", "1", "--goodput", "ttft:0")
    assert result["completed"] == 8 and result["request_goodput"] == 0
    assert result["server_metrics"]["prefix_cache_hit_rate"] > 0.5


def test_request_rate_spreads_the_arrivals(server, capsys, tmp_path):
    gaps = arrival_gaps(10, 20.0, 1.0, seed=0)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20, rel=0.6)
    assert arrival_gaps(3, float("inf"), 1.0, 0) == [0.0, 0.0, 0.0]
    _, result = bench(capsys, tmp_path, "--base-url", server.url, "--num-prompts", "10", "--random-input-len", "4",
                      "--random-output-len", "2", "--request-rate", "20", "--seed", "0")
    assert result["duration"] >= sum(gaps) * 0.9


def _bare_server() -> FastAPI:
    """An OpenAI-style server with only /v1/models and a streaming /v1/completions (three chunks, no usage)."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "bare", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions() -> StreamingResponse:
        async def gen():
            for text in ("a", "b", "c"):
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': text}]})}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(gen(), media_type="text/event-stream")

    return app


def test_works_against_a_server_without_tokenize_metrics_or_usage(capsys, tmp_path):
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(_bare_server(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        out, result = bench(capsys, tmp_path, "--base-url", f"http://127.0.0.1:{port}", "--num-prompts", "5",
                            "--random-input-len", "7")
    finally:
        srv.should_exit = True
        thread.join(10)
    assert result["completed"] == 5 and result["model_id"] == "bare"
    assert result["total_output_tokens"] == 15  # one token per chunk without usage
    assert result["input_lens"] == [7] * 5  # words, without the server's tokenizer
    assert "server_metrics" not in result and "Preemptions:" not in out
