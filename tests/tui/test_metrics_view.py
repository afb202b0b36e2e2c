"""The metrics view (attach without kvscope's plugin) in a pilot over a fake feed: the panels show the
scrapes' numbers and the KV events' set, say what they cannot show; attach's argument errors."""

from __future__ import annotations

import asyncio
import queue

import msgpack

from kvscope.cli.main import main as cli_main
from kvscope.inspector.external.kv_events import decode_batch
from kvscope.inspector.external.prometheus import parse_exposition
from kvscope.inspector.external.vllm_metrics import Scrape, ScrapeFailed
from kvscope.inspector.live.controller import drain_queue
from kvscope.tui.metrics_app import MetricsApp

SIZE = (160, 50)
EXPOSITION = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0"}} 0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0"}} 0.125
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{{engine="0"}} {queries}
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{engine="0"}} {hits}
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{{engine="0"}} {gen}
# TYPE vllm:request_success counter
vllm:request_success_total{{engine="0",finished_reason="length"}} {done}
"""


class FakeFeed:
    url = "http://vllm.test:8000"
    kv_events = "tcp://vllm.test:5557"
    kv_replay = None
    kv_error = None

    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.started = self.stopped = False

    def start(self):
        self.started = True
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True

    def drain(self, sink, limit=None) -> int:
        return drain_queue(self.items, sink, limit)


def _scrape(at: float, **values) -> Scrape:
    return Scrape(at, parse_exposition(EXPOSITION.format(**values)))


def test_the_metrics_view_shows_the_scrapes_and_the_cached_blocks_and_says_what_it_cannot():
    feed = FakeFeed()
    app = MetricsApp(feed, title="attached", deterministic=True)
    seen: dict[str, str] = {}

    def text(selector: str) -> str:
        return str(app.query_one(selector).render())

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            assert feed.started
            feed.items.put(_scrape(0.0, running=1, queries=0, hits=0, gen=0, done=0))
            feed.items.put(_scrape(1.0, running=3, queries=200, hits=64, gen=120, done=4))
            batch = msgpack.packb([1.0, [{"type": "BlockStored", "block_hashes": [b"\xab" * 32, b"\xcd" * 32],
                                          "parent_block_hash": None, "token_ids": list(range(8)), "block_size": 4,
                                          "lora_id": None, "medium": "GPU"}]])
            feed.items.put(decode_batch(0, batch))
            app.sync()
            await pilot.pause()
            seen.update(queues=text("#queues"), throughput=text("#throughput"), kv=text("#kv-events"),
                        limits=text("#cannot-show"), status=text("#status"), quantiles=text("#quantiles"))
            feed.items.put(ScrapeFailed(2.0, "ConnectError: refused"))
            app.sync()
            await pilot.pause()
            seen["failed"] = text("#status")
            await pilot.press("q")
        assert feed.stopped

    asyncio.run(drive())
    assert "running 3" in seen["queues"] and "12.5%" in seen["queues"]
    assert "32.0%" in seen["queues"] and "64/200 tokens" in seen["queues"]
    assert "120 since attach · 120 in all" in seen["throughput"] and "(length 4)" in seen["throughput"]
    assert "cached blocks 2" in seen["kv"] and "abababab" in seen["kv"] and "history complete" in seen["kv"]
    assert "not exported" in seen["quantiles"]  # no histograms in this exposition
    for missing in ("block map", "physical block ids", "owns or shares", "per-step batch", "roofline"):
        assert missing in seen["limits"], missing
    assert "metrics view" in seen["status"] and "no kvscope plugin" in seen["status"]
    assert "ConnectError: refused" in seen["failed"]


def test_attach_argument_errors(capsys):
    assert cli_main(["attach", "http://127.0.0.1:1", "--kv-replay", "tcp://127.0.0.1:2"]) == 2
    assert "--kv-replay: needs --kv-events" in capsys.readouterr().err
    assert cli_main(["attach", "http://127.0.0.1:1", "--kv-events", "127.0.0.1:2"]) == 2
    assert "--kv-events: expected tcp://HOST:PORT" in capsys.readouterr().err
    assert cli_main(["attach", "http://127.0.0.1:1"]) == 2
    assert "cannot reach the server" in capsys.readouterr().err
