"""What a client of a disaggregated deployment sees, and what the KV transfers cost, from the engines' events.

Each engine of a deployment announces its events on its own bus; `DeploymentMetrics.subscriber(engine)`
is the subscriber for one of them. A client's request is followed across engines by the KVTransfer
events, which name it on both sides: it arrives at a prefill engine (its arrival is the client's), its
first token reaches the client when the decode engine has its K/V (the decode side's `first_token`, so
TTFT includes the transfer, as with vLLM's proxy, which streams the decode side), its later tokens come
from the decode engine's steps (ITL), and it finishes there. A request whose prefill ends it (stop at the
first token, max_tokens 1) is the prefill engine's alone.

Per transfer: bytes, the receiver's time from asking to landing (`transfer`), the sender's read, and the
transfer's share of the request's TTFT. Pure python.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kvscope.inspector.events import (
    ARRIVED, FINISHED, FIRST_TOKEN, KV_PIN, BlockEvent, KVTransfer, RequestEvent, StepEnd,
)
from kvscope.inspector.metrics import Percentiles, RunSummary

Key = tuple[str, int]  # (engine, request id there)


@dataclass(slots=True)
class DeploymentSummary:
    requests: int = 0
    finished: int = 0
    failed: int = 0
    generated_tokens: int = 0
    duration_s: float = 0.0
    throughput_tok_s: float = 0.0
    ttft_ms: Percentiles = field(default_factory=Percentiles)
    itl_ms: Percentiles = field(default_factory=Percentiles)
    e2e_ms: Percentiles = field(default_factory=Percentiles)
    transfers: int = 0
    failed_transfers: int = 0
    transfer_bytes: int = 0
    transfer_ms: Percentiles = field(default_factory=Percentiles)  # receiver: asked -> landed
    send_ms: Percentiles = field(default_factory=Percentiles)      # sender: reading its blocks out
    transfer_share_of_ttft: float = 0.0  # mean over requests of transfer time / TTFT
    transfer_bytes_per_s: float = 0.0    # all bytes over all transfer time
    transports: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeploymentMetrics:
    """A fold over every engine's events (module docstring); `summary()` at any moment."""

    def __init__(self) -> None:
        self._arrived: dict[Key, int] = {}
        self._pinned: set[Key] = set()
        self._origin: dict[Key, Key] = {}  # decode side -> prefill side
        self._transfer_ns: dict[Key, int] = {}  # decode side -> its transfer's duration
        self._last_token: dict[Key, int] = {}
        self._local_first: dict[Key, int] = {}
        self._ttft: list[float] = []
        self._itl: list[float] = []
        self._e2e: list[float] = []
        self._shares: list[float] = []
        self._transfer: list[float] = []
        self._send: list[float] = []
        self._bytes = 0
        self._transfer_total_ns = 0
        self._failed_transfers = 0
        self._transports: set[str] = set()
        self._finished = 0
        self._failed = 0
        self._generated = 0
        self._first_ts: int | None = None
        self._last_ts: int | None = None

    def subscriber(self, engine: str) -> Callable[[Any], None]:
        """The bus subscriber for one engine's events."""

        def take(event: Any) -> None:
            self.take(engine, event)

        return take

    def take(self, engine: str, event: Any) -> None:
        if isinstance(event, RequestEvent):
            self._on_request(engine, event)
        elif isinstance(event, KVTransfer):
            self._on_transfer(event)
        elif isinstance(event, StepEnd):
            self._on_step_end(engine, event)
        elif isinstance(event, BlockEvent) and event.what == KV_PIN:
            self._pinned.add((engine, event.request_id))

    def _on_request(self, engine: str, e: RequestEvent) -> None:
        key = (engine, e.request_id)
        origin = self._origin.get(key)
        if origin is None:  # a request on the engine where it arrived (prefill), or not yet linked
            if e.what == ARRIVED and key not in self._arrived and not e.output_tokens:
                self._arrived[key] = e.ts
                self._first_ts = e.ts if self._first_ts is None else min(self._first_ts, e.ts)
            elif e.what == FIRST_TOKEN and key in self._arrived:
                self._local_first[key] = e.ts  # the client's only if the request ends here (not pinned)
            elif e.what == FINISHED and key in self._arrived and key not in self._pinned:
                first = self._local_first.pop(key, None)
                if first is not None:
                    self._ttft.append((first - self._arrived[key]) / 1e6)
                self._generated += e.output_tokens
                self._end(key, e)
            return
        arrived = self._arrived.get(origin)
        if arrived is None:
            return
        if e.what == FIRST_TOKEN:
            ttft = e.ts - arrived
            self._ttft.append(ttft / 1e6)
            self._generated += 1
            self._last_token[key] = e.ts
            if ttft > 0:
                self._shares.append(self._transfer_ns.get(key, 0) / ttft)
        elif e.what == FINISHED:
            self._end(origin, e)

    def _end(self, origin: Key, e: RequestEvent) -> None:
        self._finished += 1
        if e.reason == "error":
            self._failed += 1
        self._e2e.append((e.ts - self._arrived[origin]) / 1e6)
        self._last_ts = e.ts if self._last_ts is None else max(self._last_ts, e.ts)

    def _on_transfer(self, e: KVTransfer) -> None:
        dst = (e.dst_engine, e.dst_request_id)
        self._origin[dst] = (e.src_engine, e.src_request_id)
        if e.transport:
            self._transports.add(e.transport)
        if not e.ok:
            self._failed_transfers += 1
            return
        span = max(e.recv_end - e.recv_start, 0)
        self._transfer_ns[dst] = span
        self._transfer.append(span / 1e6)
        self._send.append(max(e.send_end - e.send_start, 0) / 1e6)
        self._bytes += e.bytes
        self._transfer_total_ns += span

    def _on_step_end(self, engine: str, e: StepEnd) -> None:
        last = self._last_token
        for rid, n in e.sampled:
            key = (engine, rid)
            if n <= 0 or key not in self._origin:
                continue
            self._generated += n
            prev = last.get(key)
            if prev is not None:
                self._itl.extend([(e.ts - prev) / n / 1e6] * n)
            last[key] = e.ts

    def summary(self) -> DeploymentSummary:
        duration = ((self._last_ts - self._first_ts) / 1e9
                    if self._first_ts is not None and self._last_ts is not None else 0.0)
        transfer_s = self._transfer_total_ns / 1e9
        return DeploymentSummary(
            requests=len(self._arrived), finished=self._finished, failed=self._failed,
            generated_tokens=self._generated, duration_s=duration,
            throughput_tok_s=self._generated / duration if duration > 0 else 0.0,
            ttft_ms=Percentiles.of(self._ttft), itl_ms=Percentiles.of(self._itl), e2e_ms=Percentiles.of(self._e2e),
            transfers=len(self._transfer), failed_transfers=self._failed_transfers, transfer_bytes=self._bytes,
            transfer_ms=Percentiles.of(self._transfer), send_ms=Percentiles.of(self._send),
            transfer_share_of_ttft=math.fsum(self._shares) / len(self._shares) if self._shares else 0.0,
            transfer_bytes_per_s=self._bytes / transfer_s if transfer_s > 0 else 0.0,
            transports=tuple(sorted(self._transports)),
        )


def as_run_summary(deployment: DeploymentSummary, engines: dict[str, RunSummary]) -> RunSummary:
    """The deployment as one RunSummary (what `kvscope bench` compares): the client's requests, tokens and
    latencies; the pool and scheduling figures of its busiest decode engine; preemptions of all engines."""
    decode = [s for name, s in engines.items() if name.startswith("decode")] or list(engines.values())
    base = max(decode, key=lambda s: s.generated_tokens)
    prefill = [s for name, s in engines.items() if name.startswith("prefill")]
    return replace(base, requests=deployment.requests, finished=deployment.finished,
                   prompt_tokens=sum(s.prompt_tokens for s in prefill) or base.prompt_tokens,
                   generated_tokens=deployment.generated_tokens, duration_s=deployment.duration_s,
                   throughput_tok_s=deployment.throughput_tok_s, ttft_ms=deployment.ttft_ms,
                   itl_ms=deployment.itl_ms, e2e_ms=deployment.e2e_ms,
                   preemptions=sum(s.preemptions for s in engines.values()))
