"""What the KV transfers of a disaggregated deployment cost, from its engines' KVTransfer events.

The client's view (TTFT with the transfer in it, ITL, throughput) is the ordinary Metrics over the proxy's
bus (kvscope.engine.disagg.proxy announces what a client sees there). This fold adds the transfers: how
many, their bytes, the receiver's time from asking to landing (`transfer`), the sender's read, the bytes
per second of the transport, and how much of the mean TTFT the mean transfer is (`share_of`). Subscribe it
to every engine's bus (transfers are announced by the receiving side). Pure python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kvscope.events.records import KVTransfer
from kvscope.inspector.event_fold import EventFold
from kvscope.inspector.metrics import Percentiles, RunSummary


@dataclass(slots=True)
class TransferSummary:
    transfers: int = 0
    failed: int = 0
    bytes: int = 0
    tokens: int = 0
    transfer_ms: Percentiles = field(default_factory=Percentiles)  # receiver: asked -> landed
    send_ms: Percentiles = field(default_factory=Percentiles)      # sender: reading its blocks out
    bytes_per_s: float = 0.0  # all bytes over all transfer time
    transports: tuple[str, ...] = ()

    @property
    def bytes_per_transfer(self) -> float:
        return self.bytes / self.transfers if self.transfers else 0.0

    def share_of(self, ttft: Percentiles) -> float:
        """The mean transfer's share of the mean TTFT."""
        return self.transfer_ms.mean / ttft.mean if ttft.mean > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TransferStats(EventFold):
    """A fold over KVTransfer events (module docstring); `summary()` at any moment."""

    def __init__(self) -> None:
        self._transfer: list[float] = []
        self._send: list[float] = []
        self._bytes = 0
        self._tokens = 0
        self._total_ns = 0
        self._failed = 0
        self._transports: set[str] = set()

    def on_kv_transfer(self, e: KVTransfer) -> None:
        if e.transport:
            self._transports.add(e.transport)
        if not e.ok:
            self._failed += 1
            return
        span = max(e.recv_end - e.recv_start, 0)
        self._transfer.append(span / 1e6)
        self._send.append(max(e.send_end - e.send_start, 0) / 1e6)
        self._bytes += e.bytes
        self._tokens += e.num_tokens
        self._total_ns += span

    def summary(self) -> TransferSummary:
        seconds = self._total_ns / 1e9
        return TransferSummary(len(self._transfer), self._failed, self._bytes, self._tokens,
                               Percentiles.of(self._transfer), Percentiles.of(self._send),
                               self._bytes / seconds if seconds > 0 else 0.0, tuple(sorted(self._transports)))


def with_pool_of(client: RunSummary, engines: dict[str, RunSummary]) -> RunSummary:
    """The client's summary with the pool and scheduling figures of the deployment's busiest decode engine
    (what `kvscope bench` compares beside the latencies) and the preemptions of every engine."""
    decode = [s for name, s in engines.items() if name.startswith("decode")] or list(engines.values())
    pool = max(decode, key=lambda s: s.generated_tokens)
    return replace(client, steps=pool.steps, tokens_per_step_mean=pool.tokens_per_step_mean,
                   computed_tokens=pool.computed_tokens,
                   num_blocks=pool.num_blocks, peak_kv_blocks=pool.peak_kv_blocks,
                   peak_kv_usage=pool.peak_kv_usage, preemptions=sum(s.preemptions for s in engines.values()),
                   prefix_hit_tokens=pool.prefix_hit_tokens, prefix_lookup_tokens=pool.prefix_lookup_tokens,
                   prefix_hit_rate=pool.prefix_hit_rate, internal_fragmentation=pool.internal_fragmentation,
                   internal_fragmentation_mean=pool.internal_fragmentation_mean,
                   contiguous_waste=pool.contiguous_waste, contiguous_waste_mean=pool.contiguous_waste_mean)
