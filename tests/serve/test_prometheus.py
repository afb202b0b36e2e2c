"""A real Prometheus (Debian's `prometheus`, installed by `make test`) scrapes `kvscope serve` under load, and one
PromQL query of ours per panel of vLLM's example Grafana dashboard (examples/observability/prometheus_grafana/
grafana.json: what each panel asks, in our own words) returns data. Both servers listen on 127.0.0.1 and stop
with the test; the load is bounded in count and time.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import httpx
import pytest

from kvscope.engine.llm import as_recipe
from kvscope.serve.server.api_server import ServerThread, free_port
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 96, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "max_model_len": 128},
          "sampling": {"temperature": 0.0}}
M = '{model_name="tiny"}[1m]'  # the served model; every rate and increase looks back over the whole test
PANELS = {  # the dashboard's panel title -> our query for it
    "E2E Request Latency": f"histogram_quantile(0.9, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{M})))",
    "Token Throughput": f"sum(rate(vllm:prompt_tokens_total{M})) + sum(rate(vllm:generation_tokens_total{M}))",
    "Inter Token Latency": f"rate(vllm:inter_token_latency_seconds_sum{M}) / "
                           f"rate(vllm:inter_token_latency_seconds_count{M})",
    "Scheduler State": f"max_over_time(vllm:num_requests_running{M}) + "
                       f"max_over_time(vllm:num_requests_waiting{M})",
    "Time To First Token Latency": f"histogram_quantile(0.5, sum by (le) "
                                   f"(rate(vllm:time_to_first_token_seconds_bucket{M})))",
    "Cache Utilization": f"max_over_time(vllm:kv_cache_usage_perc{M})",
    "Request Prompt Length": f"sum by (le) (increase(vllm:request_prompt_tokens_bucket{M}))",
    "Request Generation Length": f"sum by (le) (increase(vllm:request_generation_tokens_bucket{M}))",
    "Finish Reason": f"sum by (finished_reason) (increase(vllm:request_success_total{M}))",
    "Queue Time": f"rate(vllm:request_queue_time_seconds_sum{M})",
    "Requests Prefill and Decode Time": f"rate(vllm:request_prefill_time_seconds_sum{M}) + "
                                        f"rate(vllm:request_decode_time_seconds_sum{M})",
    "Max Generation Token in Sequence Group": f"rate(vllm:request_max_num_generation_tokens_sum{M})",
}


@pytest.fixture
def prometheus(tmp_path):
    """A Prometheus scraping a kvscope server every 0.5 s: (its query URL, the kvscope server)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: `make test` installs Debian's package (make prometheus)")
    with ServerThread(as_recipe(RECIPE)) as srv:
        port = free_port()
        target = f"127.0.0.1:{srv.options.port}"
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 500ms, evaluation_interval: 500ms}\n"
            f"scrape_configs: [{{job_name: kvscope, static_configs: [{{targets: ['{target}']}}]}}]\n")
        proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            assert wait_until(lambda: _ready(url), 30.0, 0.2), "prometheus did not start"
            yield url, srv
        finally:
            proc.terminate()
            proc.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _query(url: str, promql: str) -> list[dict]:
    body = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def _load(server_url: str, seconds: float, clients: int = 4, most: int = 200) -> int:
    """`clients` threads sending small completions for `seconds` (at most `most` in all); how many succeeded."""
    done, lock, deadline = [0], threading.Lock(), time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=server_url, timeout=30) as http:
            n = 0
            while time.monotonic() < deadline and done[0] < most:
                r = http.post("/v1/completions", json={"model": "tiny", "prompt": f"client {i} asks {n % 3}",
                                                       "max_tokens": 4 + n % 5, "ignore_eos": n % 2 == 0})
                n += 1
                if r.status_code == 200:
                    with lock:
                        done[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return done[0]


def test_every_panel_of_vllms_dashboard_gets_data_from_a_real_prometheus(prometheus):
    url, srv = prometheus
    assert wait_until(lambda: bool(_query(url, 'up{job="kvscope"} == 1')), 20.0, 0.25), "no scrape of kvscope"
    assert _load(srv.url, 4.0) > 0
    time.sleep(1.5)  # the last scrapes after the load
    empty = {}
    for title, promql in PANELS.items():
        if not wait_until(lambda q=promql: bool(_query(url, q)), 10.0, 0.5):
            empty[title] = promql
    assert not empty, empty
    reasons = {r["metric"]["finished_reason"]: float(r["value"][1]) for r in _query(url, PANELS["Finish Reason"])}
    assert reasons["length"] > 0
    assert float(_query(url, PANELS["Token Throughput"])[0]["value"][1]) > 0
