"""vLLM's KV events (`--kv-events-config`, the ZMQ publisher): a batch decoded from msgpack, and the set of
cached blocks they describe, by content hash.

A batch is the array [ts, events, data_parallel_rank?]. Each event comes in one of two encodings:

    tagged map  {"type": "BlockStored", "block_hashes": [...], "parent_block_hash": ..., "token_ids": [...],
                 "block_size": 16, "lora_id": null, "medium": "GPU", ...}          (vLLM >= 0.11)
    positional  ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium?, ...],
                ["BlockRemoved", block_hashes, medium?], ["AllBlocksCleared"]   (older vLLM)

A hash is bytes (sha256, today's default) or an int (older vLLM, or VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES).

The set is keyed by (medium, KV-cache group, hash), with a count of copies: vLLM sends a BlockStored for each
physical block it hashes, so two requests that filled the same content in one step give two copies of one
hash, and a BlockRemoved for each it evicts; a hash leaves the set with its last copy. AllBlocksCleared
empties the whole set. (A request with kv_cache_report_mode="full" also re-announces the blocks it reused:
that reads as another copy, so with that mode a hash may stay in the set after its last eviction.) Each block
keeps its parent and tokens, so `lookup` says how many leading blocks of a token sequence are cached, as vLLM's
prefix cache would find them (tokens only: LoRA, multimodal and cache-salt extra keys are not part of the
match).

What the events cannot say: which physical block holds a hash, which request owns it or shares it, blocks
that never filled (they are never hashed), anything before the subscriber's first batch that the replay
buffer no longer holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

BlockHash = bytes | int
STORED, REMOVED, CLEARED = "BlockStored", "BlockRemoved", "AllBlocksCleared"


class KVEventDecodeError(ValueError):
    """A payload that is not a KV-event batch."""


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[BlockHash, ...]
    parent_block_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[BlockHash, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVCacheEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class KVEventBatch:
    """One published batch; `seq` is the publisher's sequence number, `replayed` when it came through the
    replay socket (a gap filled) rather than the live one."""

    seq: int
    ts: float
    events: tuple[KVCacheEvent, ...]
    data_parallel_rank: int | None = None
    replayed: bool = False
    unknown: int = 0  # events of a type this decoder does not know (skipped)


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """Batches first..last (inclusive) the subscriber missed and the replay socket could not give back."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class PublisherRestart:
    """The sequence started again below what was seen: a new publisher (vLLM restarted); the set starts over."""

    seq: int


def hash_hex(h: BlockHash | None, width: int = 16) -> str:
    """A hash for people: the first `width` hex digits (bytes), or the 64-bit int in hex; "-" for none."""
    if h is None:
        return "-"
    if isinstance(h, int):
        return f"{h & (2**64 - 1):016x}"[:width]
    return h.hex()[:width]


def _hashes(value: Any) -> tuple[BlockHash, ...]:
    if not isinstance(value, (list, tuple)):
        raise KVEventDecodeError(f"block_hashes: expected a list, got {type(value).__name__}")
    return tuple(value)


def _field(seq: Sequence[Any], i: int) -> Any:
    return seq[i] if i < len(seq) else None


def decode_event(raw: Any) -> KVCacheEvent | None:
    """One event in either encoding; None for a type this decoder does not know."""
    if isinstance(raw, dict):
        kind = raw.get("type")
        if kind == STORED:
            return BlockStored(_hashes(raw.get("block_hashes")), raw.get("parent_block_hash"),
                               tuple(raw.get("token_ids") or ()), int(raw.get("block_size") or 0),
                               raw.get("lora_id"), raw.get("medium"), raw.get("group_idx"))
        if kind == REMOVED:
            return BlockRemoved(_hashes(raw.get("block_hashes")), raw.get("medium"), raw.get("group_idx"))
        if kind == CLEARED:
            return AllBlocksCleared()
        return None
    if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], str):
        kind = raw[0]
        if kind == STORED:
            if len(raw) < 5:
                raise KVEventDecodeError(f"BlockStored: {len(raw)} fields, expected at least 5")
            return BlockStored(_hashes(raw[1]), raw[2], tuple(raw[3] or ()), int(raw[4] or 0), _field(raw, 5),
                               _field(raw, 6))
        if kind == REMOVED:
            if len(raw) < 2:
                raise KVEventDecodeError("BlockRemoved: no block_hashes")
            return BlockRemoved(_hashes(raw[1]), _field(raw, 2))
        if kind == CLEARED:
            return AllBlocksCleared()
        return None
    raise KVEventDecodeError(f"an event: expected a tagged map or a tagged array, got {type(raw).__name__}")


def decode_batch(seq: int, payload: bytes, *, replayed: bool = False) -> KVEventBatch:
    """A published payload (msgpack) as a KVEventBatch; KVEventDecodeError when it is not one."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise KVEventDecodeError(f"not msgpack: {exc}") from None
    if isinstance(raw, dict):
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, (list, tuple)) and len(raw) >= 2:
        ts, events, rank = raw[0], raw[1], _field(raw, 2)
    else:
        raise KVEventDecodeError("a batch: expected [ts, events, rank?]")
    if not isinstance(events, (list, tuple)):
        raise KVEventDecodeError("a batch's events: expected a list")
    decoded = [decode_event(e) for e in events]
    known = tuple(e for e in decoded if e is not None)
    return KVEventBatch(seq, float(ts or 0.0), known, rank, replayed, len(decoded) - len(known))


@dataclass(frozen=True, slots=True)
class CachedBlock:
    block_hash: BlockHash
    parent: BlockHash | None
    tokens: tuple[int, ...]
    medium: str | None
    group_idx: int | None
    seq: int  # the batch that stored it


Key = tuple[str | None, int | None, BlockHash]


class KVBlockSet:
    """The cached blocks, by hash, from the batches in order (`take` a batch, a gap or a restart)."""

    def __init__(self) -> None:
        self.restarts = 0
        self._reset()

    def _reset(self) -> None:
        self.blocks: dict[Key, CachedBlock] = {}
        self.copies: dict[Key, int] = {}  # physical blocks vLLM reported holding each hash
        self._by_content: dict[tuple[str | None, int | None, BlockHash | None, tuple[int, ...]], BlockHash] = {}
        self.batches = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.stored = 0  # BlockStored hashes that were new
        self.duplicates = 0  # BlockStored hashes already in the set (another physical copy, or a reuse report)
        self.removed = 0
        self.removed_unknown = 0  # removals of hashes stored before the history this set has
        self.cleared = 0
        self.unknown_events = 0
        self.replayed_batches = 0
        self.lost_batches = 0
        self.gaps: list[SequenceGap] = []
        self.last_ts = 0.0

    @property
    def complete(self) -> bool:
        """The set was built from every batch since the publisher's first (sequence 0), none lost."""
        return self.first_seq == 0 and self.lost_batches == 0

    def take(self, item: KVEventBatch | SequenceGap | PublisherRestart) -> None:
        if isinstance(item, KVEventBatch):
            self.apply(item)
        elif isinstance(item, SequenceGap):
            self.lost_batches += item.last - item.first + 1
            self.gaps.append(item)
            del self.gaps[:-50]
        elif isinstance(item, PublisherRestart):
            self.restarts += 1
            self._reset()

    def take_all(self, items: Iterable[KVEventBatch | SequenceGap | PublisherRestart]) -> None:
        for item in items:
            self.take(item)

    def apply(self, batch: KVEventBatch) -> None:
        self.batches += 1
        if self.first_seq is None:
            self.first_seq = batch.seq
        self.last_seq = batch.seq
        self.last_ts = batch.ts
        self.replayed_batches += batch.replayed
        self.unknown_events += batch.unknown
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                self._stored(ev, batch.seq)
            elif isinstance(ev, BlockRemoved):
                for h in ev.block_hashes:
                    self._removed((ev.medium, ev.group_idx, h))
            else:
                self.cleared += 1
                self.blocks.clear()
                self.copies.clear()
                self._by_content.clear()

    def _removed(self, key: Key) -> None:
        if key not in self.blocks:
            self.removed_unknown += 1
            return
        self.removed += 1
        self.copies[key] -= 1
        if self.copies[key] > 0:
            return
        del self.copies[key]
        block = self.blocks.pop(key)
        self._by_content.pop((block.medium, block.group_idx, block.parent, block.tokens), None)

    def _stored(self, ev: BlockStored, seq: int) -> None:
        n = len(ev.block_hashes)
        per = ev.block_size if ev.block_size and len(ev.token_ids) == n * ev.block_size else 0
        parent = ev.parent_block_hash
        for i, h in enumerate(ev.block_hashes):
            key = (ev.medium, ev.group_idx, h)
            tokens = ev.token_ids[i * per:(i + 1) * per] if per else ()
            if key in self.blocks:
                self.duplicates += 1
                self.copies[key] += 1
            else:
                self.stored += 1
                self.copies[key] = 1
                self.blocks[key] = CachedBlock(h, parent, tokens, ev.medium, ev.group_idx, seq)
                if tokens:
                    self._by_content[(ev.medium, ev.group_idx, parent, tokens)] = h
            parent = h

    def by_medium(self) -> Counter[str]:
        """Cached blocks per storage medium (GPU, CPU, ...; "-" where vLLM names none)."""
        return Counter(medium or "-" for medium, _, _ in self.blocks)

    def lookup(self, tokens: Sequence[int], block_size: int, medium: str | None = None,
               group_idx: int | None = None) -> int:
        """How many leading full blocks of `tokens` are cached (a chain from the first block, by content)."""
        if block_size <= 0:
            return 0
        mediums = {m for m, _, _ in self.blocks} if medium is None else {medium}
        best = 0
        for m in mediums:
            groups = {g for mm, g, _ in self.blocks if mm == m} if group_idx is None else {group_idx}
            for g in groups:
                parent: BlockHash | None = None
                n = 0
                for start in range(0, len(tokens) - block_size + 1, block_size):
                    h = self._by_content.get((m, g, parent, tuple(tokens[start:start + block_size])))
                    if h is None:
                        break
                    parent, n = h, n + 1
                best = max(best, n)
        return best

    def recent(self, n: int) -> list[CachedBlock]:
        """The `n` blocks stored last (newest first)."""
        out = []
        for block in reversed(self.blocks.values()):
            out.append(block)
            if len(out) >= n:
                break
        return out
