"""`vllm bench serve`, vLLM's own client from the vLLM venv, against `kvscope serve smollm2 --max-num-seqs 64`,
then `kvscope bench serve` on the same server with the same workload (benchmarks/vllm_bench_serve.py, short):
vLLM's client finishes every request, and the two clients count the same requests and tokens. The timing
agreement (within 10%) is the benchmark's, in docs/performance.md, not a test's."""

from __future__ import annotations

from support.paths import load_benchmark
from support.vllm_env import SERVED_NAME, kvscope_server, requires_vllm

pytestmark = requires_vllm


def test_vllm_bench_serve_completes_every_request_and_counts_what_kvscope_bench_serve_counts(tmp_path):
    bench = load_benchmark("vllm_bench_serve")
    work = bench.Workload(num_prompts=12, input_len=32, output_len=12)
    with kvscope_server(SERVED_NAME, "--max-num-seqs", "64") as srv:
        theirs = bench.vllm_client(srv.url, work, tmp_path / "vllm.json")
        ours = bench.kvscope_client(srv.url, work, tmp_path / "kvscope.json")
    assert theirs["failed"] == 0 and theirs["completed"] == work.num_prompts
    assert theirs["total_output_tokens"] == work.num_prompts * work.output_len
    for key in ("completed", "failed", "total_input_tokens", "total_output_tokens"):
        assert ours[key] == theirs[key], key
    assert theirs["mean_ttft_ms"] > 0 and ours["mean_ttft_ms"] > 0
