"""A subscriber to vLLM's KV events (`--kv-events-config` with the zmq publisher): a SUB socket on the
publisher's endpoint and, where given, a DEALER on its replay endpoint, in a thread of their own.

vLLM's publisher sends (topic, seq as 8 bytes big-endian, msgpack payload) and keeps its last batches for
replay: a request [b"", start seq as 8 bytes] on the replay (ROUTER) socket is answered by every batch it
still holds from that seq on, each as [b"", topic, seq, payload], then [b"", b"", -1 as 8 signed bytes, b""].
The Sequencer below hands batches on in sequence order: at start it asks the replay socket for everything
from seq 0 (the set then has the history vLLM still holds), and when the live socket skips a sequence number
it holds what comes next, asks for the missing ones, and goes on when the end marker comes (or after
replay_timeout_s). What the replay buffer no longer has is handed on as a SequenceGap; a sequence number below
the one expected means a new publisher (PublisherRestart). Without a replay endpoint a gap is only reported.

Decoding and the cached-block set are kvscope.inspector.external.kv_events; this module is sockets and order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from kvscope.inspector.external.kv_events import (
    KVEventDecodeError,
    PublisherRestart,
    SequenceGap,
    decode_batch,
)

Sink = Callable[[Any], None]
END_SEQ = -1
POLL_MS = 50
MAX_MESSAGES_PER_POLL = 1000
MAX_REFILLS = 3  # replays asked for again in a row when one ends short of what was held


class Sequencer:
    """In-order delivery of (seq, payload) from the live socket, gaps filled from the replay socket.

    `live` / `replayed` / `replay_done` feed it; a start seq returned by `start` or `live` is a replay to
    request (the caller sends it). Decoded batches, gaps and restarts go to `sink`."""

    def __init__(self, sink: Sink, *, can_replay: bool, max_held: int = 10_000) -> None:
        self.sink = sink
        self.can_replay = can_replay
        self.max_held = max_held
        self.next_seq: int | None = None  # None: nothing seen yet, the first batch starts the sequence
        self.replaying = False
        self.held: dict[int, bytes] = {}
        self.delivered = 0
        self.decode_errors = 0
        self.replays = 0
        self.refills = 0  # replays asked for again in a row, for holes found when one ended

    def start(self) -> int | None:
        """At subscription: replay from 0 where there is a replay socket (the publisher's history)."""
        if not self.can_replay:
            return None
        self.next_seq = 0
        return self._replay_from(0)

    def _replay_from(self, seq: int) -> int:
        self.replaying = True
        self.replays += 1
        return seq

    def _deliver(self, seq: int, payload: bytes, replayed: bool) -> None:
        self.next_seq = seq + 1
        try:
            batch = decode_batch(seq, payload, replayed=replayed)
        except KVEventDecodeError:
            self.decode_errors += 1
            return
        self.delivered += 1
        self.sink(batch)

    def _gap_to(self, seq: int) -> None:
        if self.next_seq is not None and seq > self.next_seq:
            self.sink(SequenceGap(self.next_seq, seq - 1))

    def live(self, seq: int, payload: bytes) -> int | None:
        expected = self.next_seq
        if self.replaying:
            if expected is None or seq >= expected:
                self.held[seq] = payload
                if len(self.held) > self.max_held:  # the replay takes too long: go on without it
                    self.replay_done()
            return None
        if expected is None or seq == expected:
            self._deliver(seq, payload, False)
            return None
        if seq < expected:  # a new publisher counts from 0 again
            self.sink(PublisherRestart(seq))
            self.next_seq = 0
            if self.can_replay and seq > 0:
                self.held[seq] = payload
                return self._replay_from(0)
            self._gap_to(seq)
            self._deliver(seq, payload, False)
            return None
        if self.can_replay:  # missed expected..seq-1: ask for them, hold this one
            self.held[seq] = payload
            return self._replay_from(expected)
        self._gap_to(seq)
        self._deliver(seq, payload, False)
        return None

    def replayed(self, seq: int, payload: bytes) -> None:
        if not self.replaying:
            return  # a late answer to a replay given up on
        expected = self.next_seq
        if expected is not None and seq < expected:
            return
        self._gap_to(seq)  # the replay buffer starts after what was missed
        self._deliver(seq, payload, True)

    def replay_done(self, refill: bool = False) -> int | None:
        """The end marker came (refill=True) or the replay timed out: what was held goes on, gaps reported.
        After an end marker, live batches held past a hole that the replay did not reach (published, and
        missed live, while it was served) are asked for again, at most MAX_REFILLS times in a row: the
        returned seq is that replay's start."""
        self.replaying = False
        held, self.held = self.held, {}
        while self.next_seq is not None and self.next_seq in held:  # what follows on without a hole goes on
            seq = self.next_seq
            self._deliver(seq, held.pop(seq), False)
        held = {seq: p for seq, p in held.items() if self.next_seq is None or seq >= self.next_seq}
        if refill and self.can_replay and held and self.next_seq is not None and self.refills < MAX_REFILLS:
            self.held = held  # a hole before them: ask the replay socket again
            self.refills += 1
            return self._replay_from(self.next_seq)
        self.refills = 0
        for seq in sorted(held):
            self._gap_to(seq)
            self._deliver(seq, held[seq], False)
        return None


class KVEventsSubscriber:
    """The sockets and the thread around a Sequencer; `start()`, `stop()`; `error` if the sockets failed."""

    def __init__(self, endpoint: str, sink: Sink, *, replay_endpoint: str | None = None, topic: str = "",
                 replay_timeout_s: float = 3.0) -> None:
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.topic = topic.encode()
        self.replay_timeout_s = replay_timeout_s
        self.sequencer = Sequencer(sink, can_replay=replay_endpoint is not None)
        self.error: BaseException | None = None
        self.received = 0  # live messages
        self.replay_timeouts = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvscope-kv-events", daemon=True)

    def start(self, wait_s: float = 5.0) -> KVEventsSubscriber:
        """Start the thread; returns once its sockets are connected (at most `wait_s` seconds)."""
        self._thread.start()
        self._ready.wait(wait_s)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def replaying(self) -> bool:
        return self.sequencer.replaying

    def _run(self) -> None:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        dealer = ctx.socket(zmq.DEALER) if self.replay_endpoint else None
        try:
            sub.setsockopt(zmq.SUBSCRIBE, self.topic)
            sub.connect(self.endpoint)
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            if dealer is not None:
                dealer.connect(self.replay_endpoint or "")
                poller.register(dealer, zmq.POLLIN)
            self._ready.set()
            self._loop(sub, dealer, poller)
        except Exception as exc:  # a bad endpoint, a socket error: say so in the view
            self.error = exc
        finally:
            self._ready.set()
            sub.close(linger=0)
            if dealer is not None:
                dealer.close(linger=0)
            ctx.term()

    def _loop(self, sub: zmq.Socket, dealer: zmq.Socket | None, poller: zmq.Poller) -> None:
        seq_ = self.sequencer
        deadline = 0.0

        def request(start: int | None) -> float:
            if start is None or dealer is None:
                return deadline
            dealer.send_multipart([b"", start.to_bytes(8, "big")])
            return time.monotonic() + self.replay_timeout_s

        deadline = request(seq_.start())
        while not self._stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            if dealer is not None and dealer in ready:
                for _ in range(MAX_MESSAGES_PER_POLL):
                    try:
                        frames = dealer.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) != 4:
                        continue
                    seq = int.from_bytes(frames[2], "big", signed=True)
                    if seq == END_SEQ:
                        if seq_.replaying:
                            deadline = request(seq_.replay_done(refill=True))
                    else:
                        seq_.replayed(seq, frames[3])
            if sub in ready:
                for _ in range(MAX_MESSAGES_PER_POLL):
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) != 3:
                        continue
                    self.received += 1
                    start = seq_.live(int.from_bytes(frames[1], "big"), frames[2])
                    deadline = request(start)
            if seq_.replaying and time.monotonic() > deadline:
                self.replay_timeouts += 1
                seq_.replay_done()
