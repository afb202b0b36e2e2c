"""A soak under faults: good clients beside clients that send huge, malformed and nested bodies, disconnect
mid-stream and open connections that never finish a request, against one `kvscope serve` (issue 28, item 6).

    .venv/bin/python benchmarks/serve_soak.py [--seconds 20] [--model tiny]

runs the same good clients twice on a fresh in-process server, clean and then with the faulty clients, and
prints for each run: good requests answered / wrong / lost, the good clients' output tokens per second and
its ratio to the clean run, /health p50 / p99 / max, what each faulty client was answered, and the KV blocks
still held after the run (must be 0). tests/serve/test_serve_soak.py runs a short one in `make test`.

Every loop is bounded in count and time; servers listen on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

PROMPTS = ["hello there", "The capital of France is", "abc", "Once upon a time", "1 2 3 4", "kv cache", "zz",
           "What is 12 times 12?"]
MAX_TOKENS = 8
MAX_EACH = 2000  # requests per client at most, whatever the time


@dataclass
class SoakResult:
    seconds: float
    good_ok: int = 0
    good_wrong: int = 0
    good_lost: int = 0
    good_tokens: int = 0
    health_ms: list[float] = field(default_factory=list)
    health_failed: int = 0
    faults: Counter = field(default_factory=Counter)  # (kind, what it was answered) -> count

    @property
    def good_tok_s(self) -> float:
        return self.good_tokens / self.seconds if self.seconds else 0.0

    def health(self, q: float) -> float:
        ms = sorted(self.health_ms)
        return ms[min(int(q * len(ms)), len(ms) - 1)] if ms else float("nan")


def _good_client(url: str, expected: dict[str, str], deadline: float, out: SoakResult, lock: threading.Lock,
                 index: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        for n in range(MAX_EACH):
            if time.monotonic() > deadline:
                return
            prompt = PROMPTS[(index + n) % len(PROMPTS)]
            body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
            try:
                if n % 2:  # streaming half the time: the concatenated stream must equal the text too
                    text, tokens = _stream(http, {**body, "stream": True,
                                                  "stream_options": {"include_usage": True}})
                else:
                    r = http.post("/v1/completions", json=body)
                    r.raise_for_status()
                    data = r.json()
                    text, tokens = data["choices"][0]["text"], data["usage"]["completion_tokens"]
            except (httpx.HTTPError, KeyError, ValueError):
                with lock:
                    out.good_lost += 1
                continue
            with lock:
                if text == expected[prompt]:
                    out.good_ok += 1
                    out.good_tokens += tokens
                else:
                    out.good_wrong += 1


def _stream(http: httpx.Client, body: dict[str, Any]) -> tuple[str, int]:
    import json

    text, tokens = "", 0
    with http.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                text += chunk["choices"][0]["text"]
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return text, tokens


def _health_prober(url: str, deadline: float, out: SoakResult) -> None:
    with httpx.Client(base_url=url, timeout=5) as http:
        for _ in range(100_000):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                ok = http.get("/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                out.health_ms.append((time.perf_counter() - t0) * 1e3)
            else:
                out.health_failed += 1
            time.sleep(0.02)


def _fault_client(url: str, kind: str, deadline: float, out: SoakResult, lock: threading.Lock) -> None:
    """One faulty client sending `kind` again and again until the deadline."""
    huge = b'{"model": "tiny", "prompt": "' + b"x" * (5 * 2**20) + b'"}'
    bodies = {"huge": huge, "malformed": b'{"model": "tiny", "prompt": ', "nested": b"[" * 100_000}
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(MAX_EACH):
            if time.monotonic() > deadline:
                return
            try:
                if kind == "disconnect":
                    with http.stream("POST", "/v1/completions", json={
                            "model": "tiny", "prompt": "leave early", "max_tokens": 64, "ignore_eos": True,
                            "stream": True}) as r:
                        next(r.iter_lines(), None)  # the first chunk, then hang up
                    answer = "left mid-stream"
                else:
                    r = http.post("/v1/completions", content=bodies[kind],
                                  headers={"Content-Type": "application/json"})
                    answer = str(r.status_code)
            except httpx.HTTPError as exc:
                answer = type(exc).__name__
            with lock:
                out.faults[(kind, answer)] += 1
            time.sleep(0.05)


def _stalled_connections(host: str, port: int, count: int, deadline: float, out: SoakResult,
                         lock: threading.Lock) -> None:
    """Connections that send half a request and then nothing (slowloris), held until the deadline."""
    socks = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
        socks.append(s)
    with lock:
        out.faults[("stalled connection", "held open")] += count
    while time.monotonic() < deadline:
        time.sleep(0.1)
    for s in socks:
        s.close()


def faulty_clients(url: str, seconds: float, stalled: int = 16) -> Counter:
    """The faulty clients alone, for `seconds`: what each kind was answered, how often."""
    out, lock = SoakResult(seconds), threading.Lock()
    deadline = time.monotonic() + seconds
    host, port = url.removeprefix("http://").rsplit(":", 1)
    threads = [threading.Thread(target=_fault_client, args=(url, kind, deadline, out, lock))
               for kind in ("huge", "malformed", "nested", "disconnect")]
    threads.append(threading.Thread(target=_stalled_connections, args=(host, int(port), stalled, deadline, out,
                                                                       lock)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return out.faults


def soak(url: str, expected: dict[str, str], seconds: float, faults: bool = True, good_clients: int = 4,
         stalled: int = 16) -> SoakResult:
    """Good clients and a /health prober against the server at `url` for `seconds`; with `faults`, the faulty
    clients beside them in a process of their own (their work must not slow the good clients' process)."""
    import json
    import subprocess
    import sys

    out, lock = SoakResult(seconds), threading.Lock()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_good_client, args=(url, expected, deadline, out, lock, i))
               for i in range(good_clients)]
    threads.append(threading.Thread(target=_health_prober, args=(url, deadline, out)))
    proc = subprocess.Popen([sys.executable, __file__, "--faults-only", url, "--seconds", str(seconds),
                             "--stalled", str(stalled)], stdout=subprocess.PIPE, text=True) if faults else None
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    if proc is not None:
        stdout, _ = proc.communicate(timeout=120)
        for kind, answer, n in json.loads(stdout):
            out.faults[(kind, answer)] += n
    return out


RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 256, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256, "max_model_len": 128},
          "sampling": {"temperature": 0.0}}


def expected_texts() -> dict[str, str]:
    """Each prompt's greedy text from the offline engine on the same recipe (the oracle)."""
    from kvscope.config.sampling_params import SamplingParams
    from kvscope.engine.llm import LLM, as_recipe

    outs = LLM(as_recipe(RECIPE)).generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS))
    return {p: o.text for p, o in zip(PROMPTS, outs)}


def held_blocks(url: str) -> int:
    """KV blocks the server still holds (its kvscope:kv_used_blocks), once it is idle (bounded wait)."""
    from prometheus_client.parser import text_string_to_metric_families

    used = running = -1.0
    for _ in range(250):
        text = httpx.get(url + "/metrics", timeout=5).text
        values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        used, running = values.get("kvscope:kv_used_blocks", -1.0), values.get("vllm:num_requests_running", -1.0)
        if running == 0 and used == 0:
            break
        time.sleep(0.02)
    return int(used)


def report(name: str, r: SoakResult, clean: SoakResult | None, blocks: int) -> None:
    ratio = f" ({r.good_tok_s / clean.good_tok_s:.2f}x the clean run)" if clean and clean.good_tok_s else ""
    print(f"{name}: good {r.good_ok} answered, {r.good_wrong} wrong, {r.good_lost} lost; "
          f"{r.good_tok_s:.1f} output tok/s{ratio}; /health p50 {r.health(0.5):.1f} ms, p99 {r.health(0.99):.1f} "
          f"ms, max {max(r.health_ms, default=float('nan')):.1f} ms, {r.health_failed} failed; "
          f"{blocks} blocks held after")
    for (kind, answer), n in sorted(r.faults.items()):
        print(f"    {kind:>18}: {answer} x {n}")


def soak_server(tmp: str) -> Any:
    """`kvscope serve` on RECIPE in a process of its own on a free loopback port (so the clients' work does not
    share its interpreter): a benchmarks/serve_processes.py ServerProcess."""
    import json

    from serve_processes import kvscope_server

    path = f"{tmp}/soak.yaml"
    with open(path, "w") as f:
        json.dump({**RECIPE, "workload": {"synthetic": {}}}, f)  # JSON is YAML
    return kvscope_server(path, "--threads", "1", "--no-text-events")


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--faults-only", metavar="URL", help="run only the faulty clients against URL (print JSON)")
    parser.add_argument("--stalled", type=int, default=16, help="half-sent requests held open")
    args = parser.parse_args()
    if args.faults_only:
        import json

        counts = faulty_clients(args.faults_only, args.seconds, args.stalled)
        print(json.dumps([[kind, answer, n] for (kind, answer), n in counts.items()]))
        return
    expected = expected_texts()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, faults in (("clean", False), ("faults", True)):
            with soak_server(tmp) as srv:
                results[name] = soak(srv.url, expected, args.seconds, faults=faults)
                report(name, results[name], results.get("clean") if faults else None, held_blocks(srv.url))
    print(f"median /health: clean {statistics.median(results['clean'].health_ms):.1f} ms, "
          f"under faults {statistics.median(results['faults'].health_ms):.1f} ms")


if __name__ == "__main__":
    main()
