"""The KV connector: one engine's end of a KV transfer between engines (prefill/decode disaggregation).

The method names are vLLM's (KVConnectorBase_V1), the roles too. A *producer* (a prefill engine) runs a
prompt with max_tokens 1; when the request finishes, `request_finished` pins its blocks (they stay out of
the free pool, a `kv_pin` block event) and returns KVTransferParams naming them. A *consumer* (a decode
engine) admits the request with those params: `get_num_new_matched_tokens` says how many prompt tokens
will come from the producer (those a local prefix-cache hit already holds are not moved),
`update_state_after_alloc` notes the blocks it allocated for them (ids re-mapped: the consumer's own),
and the step's kv_load phase (`start_load_kv`) starts reading the producer's blocks through a KVPeer; in a
later step's kv_load phase (the same one, in this process) the read has arrived: the K/V is written into
those blocks, the producer is told to release its pins (the acknowledgement) and a KVTransfer event goes
out. The request then decodes from its first token (`get_finished`). While a read is under way the
consumer's steps go on with its other requests; an engine with nothing else to do waits for the earliest
read (`wait_for_any`).

Transfers are pulls, as with vLLM's NIXL connector, so the producer has nothing to save per layer
(`save_kv_layer` / `wait_for_save` are not needed) and a load lands whole before a step's forward pass
(`wait_for_layer_load` returns at once). A producer drops pins nobody read after `timeout_ns`
(`expire`), so a consumer that dies or never asks leaks nothing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from kvscope.engine.core.math_utils import cdiv
from kvscope.events.bus import EventBus
from kvscope.events.records import BlockEvent, KVTransfer
from kvscope.events.vocabulary import KV_PIN

if TYPE_CHECKING:
    from kvscope.engine.core.block_manager import BlockManager
    from kvscope.engine.core.request import Request
    from kvscope.engine.worker.kv_cache import KVCache


class KVTransferError(RuntimeError):
    """A transfer that cannot complete: the producer released the blocks, or died."""


@dataclass(slots=True, frozen=True)
class KVTransferParams:
    """What a producer hands back for a finished prompt (vLLM's kv_transfer_params): which engine holds the
    K/V, in which of its blocks, for how many tokens, under which transfer id."""

    transfer_id: str
    remote_engine_id: str
    remote_request_id: int
    remote_block_ids: tuple[int, ...]
    num_tokens: int


class PendingRead(Protocol):
    """A read of a producer's pinned blocks under way."""

    def done(self) -> bool:
        """Whether the K/V is here (never blocks)."""
        ...

    def wait(self) -> None:
        """Until it is (a simulated link: the consumer's virtual clock moves to the read's end)."""
        ...

    def result(self) -> tuple[torch.Tensor | None, int, int]:
        """The K/V (KVCache.read_blocks' layout; None over a simulated link) and the producer's read start / end
        (ns, its clock); raises what the read raised."""
        ...


class KVPeer(Protocol):
    """A producer as a consumer reaches it (in this process, a Ray actor, a simulated link)."""

    transport: str
    clock_offset_ns: int  # add to the producer's timestamps to put them on the consumer's clock

    def start_read(self, transfer_id: str, block_ids: tuple[int, ...]) -> PendingRead:
        """Start reading pinned blocks; the read completes while the consumer goes on with its steps."""
        ...

    def release_kv(self, transfer_id: str) -> None:
        """The acknowledgement: the producer may free the transfer's pinned blocks."""
        ...


class DoneRead:
    """A read that completed when it started (in this process), or failed there."""

    __slots__ = ("error", "value")

    def __init__(self, read: Callable[[], tuple[torch.Tensor | None, int, int]]) -> None:
        self.value: tuple[torch.Tensor | None, int, int] | None = None
        self.error: BaseException | None = None
        try:
            self.value = read()
        except Exception as exc:  # raised again by result(), where the consumer reports it
            self.error = exc

    def done(self) -> bool:
        return True

    def wait(self) -> None:
        return None

    def result(self) -> tuple[torch.Tensor | None, int, int]:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


@dataclass(slots=True)
class PinnedTransfer:
    request: Request
    deadline_ns: int


@dataclass(slots=True)
class PendingLoad:
    """A consumer's request waiting for its K/V: which remote blocks land in which of its own, and the read
    once started (with the time it started, on the consumer's clock)."""

    request: Request
    params: KVTransferParams
    remote_block_ids: tuple[int, ...]
    local_block_ids: tuple[int, ...]
    num_tokens: int
    read: PendingRead | None = None
    recv_start: int = 0
    error: str = ""


@dataclass(slots=True)
class KVConnector:
    """One engine's end of KV transfers (module docstring). role: "kv_producer" or "kv_consumer"."""

    engine_id: str
    role: str
    bus: EventBus
    block_manager: BlockManager
    timeout_ns: int = 30_000_000_000
    peers: Mapping[str, KVPeer] = field(default_factory=dict)
    pinned: dict[str, PinnedTransfer] = field(default_factory=dict)
    pending: list[PendingLoad] = field(default_factory=list)
    finished_recving: list[Request] = field(default_factory=list)
    failed_recving: list[tuple[Request, str]] = field(default_factory=list)
    bytes_per_block: int = 0
    step: Callable[[], int] = lambda: -1
    _ids: itertools.count = field(default_factory=itertools.count)
    pin_lock: threading.Lock = field(default_factory=threading.Lock)  # a read of pinned blocks vs their release

    # --- producer (scheduler side) ------------------------------------------------------
    def request_finished(self, request: Request) -> KVTransferParams | None:
        """A request ended here by reaching its max_tokens (the scheduler asks only then): pin its blocks for a
        consumer when it asked for a remote decode, returning the params; None = free its blocks as usual."""
        if self.role != "kv_producer" or not request.do_remote_decode:
            return None
        num_tokens = request.num_prompt_tokens
        blocks = tuple(request.block_table[:cdiv(num_tokens, self.block_manager.block_size)])
        transfer_id = f"{self.engine_id}:{request.request_id}:{next(self._ids)}"
        self.pinned[transfer_id] = PinnedTransfer(request, self.bus.clock() + self.timeout_ns)
        if self.bus.active:
            bm = self.block_manager
            self.bus.emit(BlockEvent(self.bus.clock(), self.step(), KV_PIN, request.request_id, blocks, 0,
                                     tuple(bm.ref_counts[b] for b in blocks), tuple(bm.block_hash[b] for b in blocks)))
        return KVTransferParams(transfer_id, self.engine_id, request.request_id, blocks, num_tokens)

    def read_kv(self, kv_cache: KVCache, transfer_id: str, block_ids: tuple[int, ...]) -> tuple[torch.Tensor, int, int]:
        """Serve a consumer's read of pinned blocks (KVTransferError when the pins are gone). It may run beside
        a step of this engine (another thread): pinned blocks are written by no one, and the pin lock keeps them
        from being freed (and reused) while they are read."""
        with self.pin_lock:
            pin = self.pinned.get(transfer_id)
            if pin is None:
                raise KVTransferError(f"transfer {transfer_id}: {self.engine_id} holds no such pinned blocks "
                                      f"(released, timed out, or never pinned)")
            if not set(block_ids) <= set(pin.request.block_table):
                raise KVTransferError(f"transfer {transfer_id}: blocks {block_ids} are not the request's")
            start = self.bus.clock()
            data = kv_cache.read_blocks(list(block_ids))
            return data, start, self.bus.clock()

    def release_kv(self, transfer_id: str) -> None:
        """The consumer is done with (or gave up on) a transfer: free its pinned blocks (the engine's lock held:
        the block manager is the step's)."""
        with self.pin_lock:
            pin = self.pinned.pop(transfer_id, None)
            if pin is not None:
                self.block_manager.free(pin.request)

    def expire(self) -> list[str]:
        """Free the pins whose timeout passed (a consumer that never read or acknowledged); their ids."""
        now = self.bus.clock()
        gone = [tid for tid, pin in self.pinned.items() if pin.deadline_ns <= now]
        for tid in gone:
            self.release_kv(tid)
        return gone

    # --- consumer (scheduler side) ------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> int:
        """Tokens of `request` the producer will provide beyond the num_computed_tokens it already has here
        (prefix-cache hits)."""
        params = request.kv_transfer_params
        if params is None or self.role != "kv_consumer":
            return 0
        return max(params.num_tokens - num_computed_tokens, 0)

    def update_state_after_alloc(self, request: Request, num_external_tokens: int) -> None:
        """The request holds its blocks now: note which remote blocks land in which local ones (the logical
        blocks past its prefix-cache hits, up to the last one holding a transferred token)."""
        params = request.kv_transfer_params
        assert params is not None
        bs = self.block_manager.block_size
        first = (params.num_tokens - num_external_tokens) // bs
        last = cdiv(params.num_tokens, bs)
        self.pending.append(PendingLoad(request, params, params.remote_block_ids[first:last],
                                        tuple(request.block_table[first:last]), num_external_tokens))

    def get_finished(self) -> tuple[list[Request], list[tuple[Request, str]]]:
        """Requests whose K/V landed since the last call, and those whose transfer failed (with why)."""
        done, failed = self.finished_recving, self.failed_recving
        self.finished_recving, self.failed_recving = [], []
        return done, failed

    def request_aborted(self, request: Request) -> None:
        """A consumer's request ended before its K/V landed (aborted while queued or mid-transfer): forget its
        load and release the producer's pins."""
        self.pending = [load for load in self.pending if load.request is not request]
        if request.kv_transfer_params is not None:
            self._release(request.kv_transfer_params)

    # --- consumer (worker side) ---------------------------------------------------------
    def start_load_kv(self, kv_cache: KVCache | None) -> None:
        """Start the reads of newly admitted requests; land those that arrived (write their K/V into this engine's
        blocks, acknowledge, emit KVTransfer events). Reads still under way stay pending: the engine's steps go
        on meanwhile (vLLM's asynchronous load: requests wait, the batch does not)."""
        for load in self.pending:
            if load.read is None and not load.error:
                self._start(load)
        still: list[PendingLoad] = []
        for load in self.pending:
            if load.error or load.read is None or load.read.done():
                self._land(kv_cache, load)
            else:
                still.append(load)
        self.pending = still

    def wait_for_any(self) -> None:
        """The engine has nothing else to do: wait until the earliest pending read has arrived."""
        reads = [load.read for load in self.pending if load.read is not None and not load.error]
        if reads and not any(r.done() for r in reads):
            reads[0].wait()

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Loads land whole in start_load_kv, before the forward pass: nothing to wait for per layer."""

    def _start(self, load: PendingLoad) -> None:
        params = load.params
        load.recv_start = self.bus.clock()
        if not load.remote_block_ids:  # a prefix-cache hit here covered every transferred token
            return
        peer = self.peers.get(params.remote_engine_id)
        if peer is None:
            load.error = f"no producer named {params.remote_engine_id}"
            return
        try:
            load.read = peer.start_read(params.transfer_id, load.remote_block_ids)
        except Exception as exc:  # a dead actor raises Ray's own errors: report, do not crash
            load.error = _failure(params, exc)

    def _land(self, kv_cache: KVCache | None, load: PendingLoad) -> None:
        params, req = load.params, load.request
        peer = self.peers.get(params.remote_engine_id)
        send_start = send_end = load.recv_start
        if load.read is not None and not load.error:
            try:
                assert peer is not None  # a read was started, so _start found the producer
                data, send_start, send_end = load.read.result()
                send_start += peer.clock_offset_ns
                send_end += peer.clock_offset_ns
                if data is not None:  # None: a simulated link (no K/V to move)
                    assert kv_cache is not None  # real K/V comes only to an engine that has a KV cache
                    kv_cache.write_blocks(list(load.local_block_ids), data)
            except Exception as exc:  # as in _start
                load.error = _failure(params, exc)
        recv_end = self.bus.clock()
        if not load.error:
            self._release(params)
            self.finished_recving.append(req)
        else:
            self.failed_recving.append((req, load.error))
        if self.bus.active:
            nbytes = len(load.local_block_ids) * self.bytes_per_block if not load.error else 0
            self.bus.emit(KVTransfer(recv_end, self.step(), params.transfer_id, params.remote_engine_id, self.engine_id,
                                     params.remote_request_id, req.request_id, load.remote_block_ids,
                                     load.local_block_ids, load.num_tokens, nbytes, send_start, send_end,
                                     load.recv_start, recv_end, peer.transport if peer is not None else "",
                                     not load.error, load.error))

    def _release(self, params: KVTransferParams) -> None:
        peer = self.peers.get(params.remote_engine_id)
        if peer is not None:
            try:
                peer.release_kv(params.transfer_id)
            except Exception:
                pass


def _failure(params: KVTransferParams, exc: BaseException) -> str:
    why = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return f"KV transfer from {params.remote_engine_id} failed: {why}"
