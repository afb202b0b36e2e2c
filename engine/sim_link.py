"""A KV transfer between simulated engines: no bytes move; the receiving engine's virtual clock advances by
what the modelled network link takes (latency + bytes / bandwidth), the deployment's `link_gb_s` and
`link_latency_us`. The producer still checks the transfer (its pins must be there), and releases them on
acknowledgement, as a real one does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvscope.engine.kv_connector import KVTransferError

if TYPE_CHECKING:
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.engine.sim_runner import SimClock


class SimLinkPeer:
    """A simulated prefill engine as a simulated decode engine reads from it (a KVPeer)."""

    transport = "sim-link"
    clock_offset_ns = 0

    def __init__(self, producer: LLMEngine, consumer_clock: SimClock, gb_s: float, latency_us: float) -> None:
        self.producer = producer
        self.clock = consumer_clock
        self.bytes_per_s = gb_s * 1e9
        self.latency_s = latency_us * 1e-6

    def seconds(self, nbytes: int) -> float:
        """The link's time for nbytes."""
        return self.latency_s + nbytes / self.bytes_per_s

    def read_kv(self, transfer_id: str, block_ids: tuple[int, ...]) -> tuple[None, int, int]:
        connector = self.producer.connector
        if connector is None or transfer_id not in connector.pinned:
            raise KVTransferError(f"transfer {transfer_id}: {self.producer.engine_id} holds no such pinned blocks")
        start = self.clock()
        self.clock.advance(self.seconds(len(block_ids) * self.producer.bytes_per_block))
        return None, start, self.clock()

    def release_kv(self, transfer_id: str) -> None:
        self.producer.release_kv(transfer_id)
