"""A KV transfer between simulated engines: no bytes move; the read ends, on the receiving engine's virtual
clock, when the modelled network link has carried it: latency + bytes / bandwidth (the deployment's
`link_gb_s` and `link_latency_us`), after the reads before it on the same link. Until then the receiving
engine goes on with its other requests; with nothing else to do it waits (its clock jumps to the end).
The producer still checks the transfer (its pins must be there) and releases them on acknowledgement, as a
real one does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvscope.engine.core.kv_connector import KVTransferError

if TYPE_CHECKING:
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.engine.sim.runner import SimClock


class SimRead:
    """A read on a simulated link: done once the consumer's clock has reached its end."""

    __slots__ = ("clock", "end", "start")

    def __init__(self, clock: SimClock, start: int, end: int) -> None:
        self.clock, self.start, self.end = clock, start, end

    def done(self) -> bool:
        return self.clock() >= self.end

    def wait(self) -> None:
        self.clock.advance_to(self.end)

    def result(self) -> tuple[None, int, int]:
        return None, self.start, self.end


class SimLinkPeer:
    """A simulated prefill engine as a simulated decode engine reads from it (a KVPeer)."""

    transport = "sim-link"
    clock_offset_ns = 0

    def __init__(self, producer: LLMEngine, consumer_clock: SimClock, gb_s: float, latency_us: float) -> None:
        self.producer = producer
        self.clock = consumer_clock
        self.bytes_per_s = gb_s * 1e9
        self.latency_s = latency_us * 1e-6
        self.free_at = 0  # the link carries one transfer at a time: busy until this virtual time

    def seconds(self, nbytes: int) -> float:
        """The link's time for nbytes."""
        return self.latency_s + nbytes / self.bytes_per_s

    def start_read(self, transfer_id: str, block_ids: tuple[int, ...]) -> SimRead:
        connector = self.producer.connector
        if connector is None or transfer_id not in connector.pinned:
            raise KVTransferError(f"transfer {transfer_id}: {self.producer.engine_id} holds no such pinned blocks")
        start = max(self.clock(), self.free_at)
        end = start + round(self.seconds(len(block_ids) * self.producer.bytes_per_block) * 1e9)
        self.free_at = end
        return SimRead(self.clock, start, end)

    def release_kv(self, transfer_id: str) -> None:
        self.producer.release_kv(transfer_id)
