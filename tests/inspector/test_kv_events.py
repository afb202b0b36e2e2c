"""vLLM's KV events decoded in both encodings (msgpack built by hand: today's tagged maps, the older tagged
arrays) and folded into the cached-block set by hash."""

from __future__ import annotations

import msgpack
import pytest

from kvscope.inspector.external.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVBlockSet,
    KVEventDecodeError,
    PublisherRestart,
    SequenceGap,
    decode_batch,
    hash_hex,
)

H1, H2, H3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32  # sha256-sized, as vLLM 0.32 sends them


def tagged(*events: dict) -> bytes:
    """A batch as vLLM >= 0.11 encodes it: [ts, [{"type": ..., field: value}], rank]."""
    return msgpack.packb([12.5, list(events), 0], use_bin_type=True)


def positional(*events: list) -> bytes:
    """A batch as older vLLM encodes it: events are arrays, the tag first."""
    return msgpack.packb([12.5, list(events)], use_bin_type=True)


def stored_map(hashes, parent, tokens, block_size=4, medium="GPU"):
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens,
            "block_size": block_size, "lora_id": None, "medium": medium, "lora_name": None, "group_idx": 0}


def test_the_tagged_map_encoding():
    batch = decode_batch(7, tagged(stored_map([H1, H2], None, list(range(8))),
                                   {"type": "BlockRemoved", "block_hashes": [H1], "medium": "GPU", "group_idx": 0},
                                   {"type": "AllBlocksCleared"}, {"type": "SomethingNewer", "x": 1}))
    assert batch.seq == 7 and batch.ts == 12.5 and batch.data_parallel_rank == 0 and batch.unknown == 1
    assert batch.events == (BlockStored((H1, H2), None, tuple(range(8)), 4, None, "GPU", 0),
                            BlockRemoved((H1,), "GPU", 0), AllBlocksCleared())


def test_the_older_positional_encoding_with_int_hashes():
    batch = decode_batch(0, positional(["BlockStored", [11, 12], None, list(range(8)), 4, None],
                                       ["BlockStored", [13], 12, [9, 9, 9, 9], 4, None, "GPU"],
                                       ["BlockRemoved", [11]], ["AllBlocksCleared"]))
    assert batch.data_parallel_rank is None and batch.unknown == 0
    assert batch.events == (BlockStored((11, 12), None, tuple(range(8)), 4, None, None),
                            BlockStored((13,), 12, (9, 9, 9, 9), 4, None, "GPU"),
                            BlockRemoved((11,), None), AllBlocksCleared())
    assert hash_hex(12) == "000000000000000c" and hash_hex(H1, 8) == "01010101" and hash_hex(None) == "-"


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb("text"), msgpack.packb([1.0, 5]),
                                     msgpack.packb([1.0, [["BlockStored", [1]]]]), msgpack.packb([1.0, [7]])])
def test_what_is_not_a_batch_is_refused(payload):
    with pytest.raises(KVEventDecodeError):
        decode_batch(0, payload)


def test_both_encodings_build_the_same_set():
    a, b = KVBlockSet(), KVBlockSet()
    a.apply(decode_batch(0, tagged(stored_map([H1, H2], None, list(range(8))))))
    a.apply(decode_batch(1, tagged(stored_map([H3], H2, [8, 9, 10, 11]))))
    b.apply(decode_batch(0, positional(["BlockStored", [H1, H2], None, list(range(8)), 4, None, "GPU", None])))
    b.apply(decode_batch(1, positional(["BlockStored", [H3], H2, [8, 9, 10, 11], 4, None, "GPU"])))
    assert {k[2] for k in a.blocks} == {k[2] for k in b.blocks} == {H1, H2, H3}
    assert a.lookup(list(range(12)), 4) == b.lookup(list(range(12)), 4) == 3


def test_the_set_stores_removes_clears_and_finds_prefixes():
    s = KVBlockSet()
    s.apply(decode_batch(0, tagged(stored_map([H1, H2], None, list(range(8))))))
    assert s.lookup(list(range(12)), 4) == 2 and s.lookup([0, 1, 2, 3, 9, 9, 9, 9], 4) == 1
    assert s.lookup([5, 1, 2, 3], 4) == 0 and s.lookup(list(range(7)), 4) == 1  # only full blocks
    s.apply(decode_batch(1, tagged(stored_map([H1], None, [0, 1, 2, 3]))))  # a second physical copy of H1
    assert (len(s.blocks), s.stored, s.duplicates, s.copies[("GPU", 0, H1)]) == (2, 2, 1, 2)
    removed = {"type": "BlockRemoved", "block_hashes": [H1, H3], "medium": "GPU", "group_idx": 0}
    s.apply(decode_batch(2, tagged(removed)))
    assert (len(s.blocks), s.removed, s.removed_unknown) == (2, 1, 1)  # one copy of H1 left
    assert s.lookup(list(range(8)), 4) == 2
    s.apply(decode_batch(2, tagged({**removed, "block_hashes": [H1]})))
    assert (len(s.blocks), s.removed) == (1, 2)
    assert s.lookup(list(range(8)), 4) == 0  # the chain starts at the removed block
    assert [b.block_hash for b in s.recent(5)] == [H2] and s.by_medium() == {"GPU": 1}
    s.apply(decode_batch(3, tagged({"type": "AllBlocksCleared"})))
    assert not s.blocks and not s.copies and s.cleared == 1 and s.lookup(list(range(8)), 4) == 0
    assert s.complete and (s.first_seq, s.last_seq, s.batches) == (0, 3, 5)


def test_gaps_and_restarts():
    s = KVBlockSet()
    s.take(decode_batch(0, tagged(stored_map([H1], None, [1, 2, 3, 4]))))
    s.take(SequenceGap(1, 3))
    s.take(decode_batch(4, tagged(stored_map([H2], H1, [5, 6, 7, 8]))))
    assert not s.complete and s.lost_batches == 3 and len(s.blocks) == 2
    s.take(PublisherRestart(0))
    assert s.restarts == 1 and not s.blocks and s.first_seq is None
    s.take(decode_batch(0, tagged(stored_map([H3], None, [1, 1, 1, 1]))))
    assert s.complete and list(s.blocks) == [("GPU", 0, H3)]
