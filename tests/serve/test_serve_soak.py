"""The soak under faults (benchmarks/serve_soak.py), short: good clients beside clients that send 5 MB bodies,
malformed and 100,000-deep nested JSON, hang up mid-stream and hold half-sent requests open. Oracles: the
offline engine's greedy text for every good request, vLLM's statuses for the bad ones (413, 400), the engine's
block manager (every block back), and /health answering throughout."""

from __future__ import annotations

import pytest

from kvscope.engine.llm import as_recipe
from kvscope.serve.server.api_server import ServerThread
from support.paths import load_benchmark

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_no_good_request_is_lost_or_wrong_and_no_block_leaks_under_faults():
    soak = load_benchmark("serve_soak")
    expected = soak.expected_texts()
    with ServerThread(as_recipe(soak.RECIPE)) as srv:
        result = soak.soak(srv.url, expected, seconds=6.0, faults=True, good_clients=3, stalled=8)
        held = soak.held_blocks(srv.url)
    soak.report("faults", result, None, held)
    assert result.good_ok > 0 and result.good_wrong == 0 and result.good_lost == 0
    assert held == 0
    answers = {(kind, answer) for kind, answer in result.faults}
    assert {a for k, a in answers if k == "huge"} == {"413"}
    assert {a for k, a in answers if k == "malformed"} == {"400"}
    assert {a for k, a in answers if k == "nested"} == {"400"}
    assert {a for k, a in answers if k == "disconnect"} == {"left mid-stream"}
    assert ("stalled connection", "held open") in answers
    assert result.health_failed == 0 and len(result.health_ms) > 50
    assert result.health(0.99) < 1000  # bounded, not a speed claim: p99 is reported by the benchmark
