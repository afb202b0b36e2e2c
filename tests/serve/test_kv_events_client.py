"""The KV-event subscriber's order and resync: the Sequencer alone, then against a fake vLLM publisher on
loopback (a PUB socket and a ROUTER replay socket that answer as vLLM's ZmqEventPublisher does)."""

from __future__ import annotations

import threading

import msgpack
import zmq

from kvscope.inspector.external.kv_events import KVBlockSet, KVEventBatch, PublisherRestart, SequenceGap
from kvscope.serve.client.kv_events_client import END_SEQ, KVEventsSubscriber, Sequencer
from support.waiting import wait_until


def payload(seq: int) -> bytes:
    """Batch `seq` stores one block, hash seq (int hashes, positional events: any encoding will do here)."""
    return msgpack.packb([float(seq), [["BlockStored", [seq], seq - 1 if seq else None, [seq] * 4, 4, None]]])


def seqs(items) -> list[int]:
    return [i.seq for i in items if isinstance(i, KVEventBatch)]


def test_sequencer_without_replay_reports_gaps_and_restarts():
    out: list = []
    s = Sequencer(out.append, can_replay=False)
    assert s.start() is None
    for seq in (5, 6, 9, 10, 2):
        assert s.live(seq, payload(seq)) is None
    assert seqs(out) == [5, 6, 9, 10, 2]
    assert SequenceGap(7, 8) in out and PublisherRestart(2) in out and SequenceGap(0, 1) in out
    s.live(3, b"\xc1")  # undecodable: counted, the sequence goes on
    assert s.decode_errors == 1 and s.next_seq == 4


def test_sequencer_holds_the_live_stream_while_a_gap_is_replayed():
    out: list = []
    s = Sequencer(out.append, can_replay=True)
    assert s.start() == 0 and s.replaying
    s.live(3, payload(3))  # arrives during the start-up replay: held
    for seq in (0, 1, 2):
        s.replayed(seq, payload(seq))
    s.replay_done()
    assert seqs(out) == [0, 1, 2, 3] and not any(isinstance(i, SequenceGap) for i in out)
    assert s.live(6, payload(6)) == 4  # 4 and 5 missed: replay from 4
    s.live(7, payload(7))
    s.replayed(5, payload(5))  # the buffer no longer has 4
    s.replay_done()
    assert seqs(out) == [0, 1, 2, 3, 5, 6, 7] and SequenceGap(4, 4) in out
    s.replayed(8, payload(8))  # a late answer after the replay ended: ignored
    assert seqs(out)[-1] == 7


def test_sequencer_gives_up_holding_past_its_bound():
    out: list = []
    s = Sequencer(out.append, can_replay=True, max_held=3)
    s.start()
    for seq in range(10, 15):
        s.live(seq, payload(seq))
    assert not s.replaying and seqs(out)[:4] == [10, 11, 12, 13] and SequenceGap(0, 9) in out


def test_a_hole_the_replay_did_not_reach_is_asked_for_again_not_reported_lost():
    out: list = []
    s = Sequencer(out.append, can_replay=True)
    assert s.start() == 0
    for seq in range(3):
        s.replayed(seq, payload(seq))
    for seq in (3, 4, 7, 8):  # live while the first replay is still being answered; 5 and 6 never came live
        assert s.live(seq, payload(seq)) is None
    assert s.replay_done(refill=True) == 5  # the end marker: 3 and 4 go on, 7 and 8 wait past a hole, asked for
    for seq in range(5, 9):
        s.replayed(seq, payload(seq))
    assert s.replay_done(refill=True) is None
    assert seqs(out) == list(range(9)) and not any(isinstance(i, SequenceGap) for i in out)


def test_refills_stop_after_a_few_and_the_hole_is_then_reported():
    out: list = []
    s = Sequencer(out.append, can_replay=True)
    s.start()
    s.replayed(0, payload(0))
    s.live(5, payload(5))
    starts = [s.replay_done(refill=True) for _ in range(5)]
    assert starts[:3] == [1, 1, 1] and starts[3] is None  # then given up: the gap is said, 5 delivered
    assert SequenceGap(1, 4) in out and seqs(out) == [0, 5]


class FakePublisher:
    """vLLM's publisher on loopback: PUB (topic, seq, payload) and a replay ROUTER over its buffer."""

    def __init__(self, first_buffered: int = 0) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.replay_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.buffer: list[tuple[int, bytes]] = []
        self.first_buffered = first_buffered  # older batches fell out of the replay buffer
        self.replay_requests: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve_replays, daemon=True)
        self.thread.start()

    def publish(self, seq: int, live: bool = True) -> None:
        with self.lock:
            self.buffer.append((seq, payload(seq)))
        if live:
            self.pub.send_multipart([b"", seq.to_bytes(8, "big"), payload(seq)])

    def _serve_replays(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(20):
                continue
            client, _, start = self.router.recv_multipart()
            begin = int.from_bytes(start, "big")
            self.replay_requests.append(begin)
            with self.lock:
                held = [(s, p) for s, p in self.buffer if s >= max(begin, self.first_buffered)]
            for s, p in held:
                self.router.send_multipart([client, b"", b"", s.to_bytes(8, "big"), p])
            self.router.send_multipart([client, b"", b"", END_SEQ.to_bytes(8, "big", signed=True), b""])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pub.close(linger=0)
        self.router.close(linger=0)
        self.ctx.term()


def _subscribe(pub: FakePublisher, replay: bool = True):
    items: list = []
    sub = KVEventsSubscriber(f"tcp://127.0.0.1:{pub.pub_port}", items.append,
                             replay_endpoint=f"tcp://127.0.0.1:{pub.replay_port}" if replay else None,
                             replay_timeout_s=2.0)
    return items, sub


def test_a_late_subscriber_gets_the_history_and_a_live_gap_filled_from_the_replay_socket():
    pub = FakePublisher()
    try:
        for seq in range(3):  # before anyone listens: only the replay socket has them
            pub.publish(seq)
        items, sub = _subscribe(pub)
        sub.start()
        try:
            assert wait_until(lambda: len(seqs(items)) == 3, 10)
            for seq in range(3, 10):
                pub.publish(seq, live=seq not in (5, 6))  # 5 and 6 never reach the live socket
            assert wait_until(lambda: len(seqs(items)) == 10, 10), seqs(items)
        finally:
            sub.stop()
    finally:
        pub.close()
    assert seqs(items) == list(range(10)) and sub.error is None
    assert not any(isinstance(i, SequenceGap) for i in items)
    assert pub.replay_requests[0] == 0 and 5 in pub.replay_requests
    blocks = KVBlockSet()
    blocks.take_all(items)
    assert blocks.complete and len(blocks.blocks) == 10 and blocks.replayed_batches >= 5


def test_history_the_replay_buffer_lost_is_a_gap_and_without_replay_a_gap_stays():
    pub = FakePublisher(first_buffered=2)
    try:
        for seq in range(4):
            pub.publish(seq)
        items, sub = _subscribe(pub)
        sub.start()
        try:
            assert wait_until(lambda: seqs(items) == [2, 3], 10), items
        finally:
            sub.stop()
        assert items[0] == SequenceGap(0, 1)
        items, sub = _subscribe(pub, replay=False)
        sub.start()
        try:  # the live socket joins late (ZMQ's slow joiner): publish, every third withheld, until a gap
            def gap() -> bool:
                return any(isinstance(i, SequenceGap) for i in items)

            for seq in range(4, 400):
                pub.publish(seq, live=seq % 3 != 0)
                if wait_until(gap, 0.02):
                    break
            assert gap(), items
        finally:
            sub.stop()
    finally:
        pub.close()
    blocks = KVBlockSet()
    blocks.take_all(items)
    assert not blocks.complete and blocks.lost_batches >= 1


def test_a_bad_endpoint_is_an_error_not_a_hang():
    items: list = []
    sub = KVEventsSubscriber("nonsense://x", items.append).start()
    assert wait_until(lambda: sub.error is not None, 5)
    sub.stop()
