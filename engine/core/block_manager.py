"""The KV block manager: physical blocks, reference counts, block tables and the prefix cache.

Free blocks wait in one ordered queue. Blocks that hold nothing reusable sit at
its head and are handed out first; blocks that still hold a hashed prefix
("cached") are appended at its tail when their last holder lets go, so the
least recently used cached block is evicted only when the plain free blocks run
out. A full block's hash covers its parent's hash and its own tokens (a chain),
so one lookup walks a prompt block by block.

A hash alone never decides a hit (cf. vLLM's CVE-2025-25183): each cached block
keeps its key (logical index, parent's hash, tokens) and is shared only when the
request's key at that index is equal, so its tokens are the request's
(nano-vllm's check) and a block never serves two places of one table. The chain
is sha256 over the parent's hash and the tokens, so a block's parents are the
request's unless sha256 collides. A request whose chain meets a hash held under
another key caches nothing of its chain past it.

Every change is announced on the event bus as a BlockEvent.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from kvscope.engine.core.math_utils import cdiv
from kvscope.engine.core.request import Request
from kvscope.events.bus import EventBus
from kvscope.events.records import BlockEvent
from kvscope.events.vocabulary import ALLOC, CACHED, EVICT, FREE, PREFIX_HIT, SPEC_ROLLBACK

_HASH_BYTES = 32

BlockKey = tuple[int, int, tuple[int, ...]]  # a cached block's logical index, its parent's chain hash, its tokens


def chain_hash(parent: int, tokens: Sequence[int]) -> int:
    """The hash of a full block given its parent's hash (0 for the first block): sha256 over the parent's 32 bytes
    and the tokens as int64s, as a 256-bit int; never 0."""
    digest = hashlib.sha256(parent.to_bytes(_HASH_BYTES, "little"))
    digest.update(array("q", tokens))
    return int.from_bytes(digest.digest(), "little") or 1


class BlockManager:
    """Allocates KV blocks to requests; owns ref counts and the prefix-cache index."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool, bus: EventBus) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.bus = bus
        self.step = -1
        self.ref_counts = [0] * num_blocks
        self.block_hash = [0] * num_blocks
        self.block_key: list[BlockKey | None] = [None] * num_blocks  # what a cached block holds (None: unhashed)
        self.hash_to_block: dict[int, int] = {}
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.num_cached_free = 0
        self.num_shared_extra = 0  # sum over blocks of max(ref - 1, 0)

    # --- counts -----------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now (plain free + cached-but-unreferenced)."""
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def can_allocate(self, num_blocks: int) -> bool:
        """Whether the pool can hand out num_blocks blocks now."""
        return num_blocks <= len(self.free_queue)

    def largest_free_run(self) -> int:
        """The longest run of free blocks, for an allocator that needs runs (kvscope.engine.core.contiguous_blocks);
        -1 here: a paged pool can use any free block."""
        return -1

    @property
    def refused_with_memory_free(self) -> int:
        """Requests refused blocks although enough were free: never, for paging."""
        return 0

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        """Fresh blocks the request needs to hold num_new_tokens more tokens."""
        total = request.num_computed_tokens + num_new_tokens
        return max(0, cdiv(total, self.block_size) - len(request.block_table))

    # --- prefix cache -----------------------------------------------------------------
    def find_cached_prefix(self, request: Request) -> list[int]:
        """Physical blocks that already hold the request's leading full blocks (never its last token): each found
        by its chain hash and taken only if its key (index, parent's hash, tokens) is the request's."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        tokens = request.token_ids
        hits: list[int] = []
        parent = 0
        for i in range((len(tokens) - 1) // bs):
            chunk = tuple(tokens[i * bs:(i + 1) * bs])
            h = chain_hash(parent, chunk)
            block = self.hash_to_block.get(h)
            if block is None or self.block_key[block] != (i, parent, chunk):
                break
            hits.append(block)
            parent = h
        return hits

    def _share_prefix(self, request: Request, blocks: Sequence[int]) -> None:
        """Share `blocks` (from find_cached_prefix) with a request that holds no blocks yet."""
        assert not request.block_table
        for b in blocks:
            if self.ref_counts[b] == 0:
                del self.free_queue[b]
                self.num_cached_free -= 1
            else:
                self.num_shared_extra += 1
            self.ref_counts[b] += 1
        request.block_table = list(blocks)
        request.block_hashes = [self.block_hash[b] for b in blocks]
        request.num_computed_tokens = len(blocks) * self.block_size
        if self.bus.active and blocks:
            self._emit(PREFIX_HIT, request.request_id, blocks, 0)

    def cache_full_blocks(self, request: Request) -> None:
        """Register the request's newly completed full blocks under their chain hashes (up to a block whose hash
        another key holds: a collision stops the request's chain there)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(request.num_computed_tokens // bs, len(request.block_table))
        start = len(request.block_hashes)
        if num_full <= start:
            return
        tokens = request.token_ids
        parent = request.block_hashes[-1] if request.block_hashes else 0
        newly: list[tuple[int, int]] = []
        for i in range(start, num_full):
            chunk = tuple(tokens[i * bs:(i + 1) * bs])
            h = chain_hash(parent, chunk)
            holder = self.hash_to_block.get(h)
            if holder is not None and self.block_key[holder] != (i, parent, chunk):
                break  # a collision: the hash is another block's, so nothing of this chain past it is cached
            b = request.block_table[i]
            if holder is None and self.block_hash[b] == 0:
                self.hash_to_block[h] = b
                self.block_hash[b] = h
                self.block_key[b] = (i, parent, chunk)
                newly.append((i, b))
            request.block_hashes.append(h)
            parent = h
        if self.bus.active and newly:
            ts = self.bus.clock()
            for i, b in newly:
                self.bus.emit(BlockEvent(ts, self.step, CACHED, request.request_id, (b,), i,
                                         (self.ref_counts[b],), (self.block_hash[b],)))

    # --- allocation -------------------------------------------------------------------
    def allocate_slots(self, request: Request, num_new_tokens: int, new_computed_blocks: Sequence[int] = (),
                       what: str = ALLOC) -> list[int] | None:
        """Room for num_new_tokens more tokens of `request`: first share new_computed_blocks (prefix-cache hits
        from find_cached_prefix, for a request that holds no blocks yet; their tokens count as computed),
        then take fresh blocks. Returns the fresh blocks, or None (and nothing changes) if the pool can't.
        `what` names the event (SPEC_ALLOC for blocks a step's draft tokens alone need)."""
        hit_tokens = len(new_computed_blocks) * self.block_size
        need = self.blocks_needed(request, hit_tokens + num_new_tokens) - len(new_computed_blocks)
        hits_now_free = sum(1 for b in new_computed_blocks if self.ref_counts[b] == 0)  # leave the free queue
        if need + hits_now_free > len(self.free_queue):
            return None
        if new_computed_blocks:
            self._share_prefix(request, new_computed_blocks)
        if need <= 0:
            return []
        first_logical = len(request.block_table)
        new_blocks = [self._pop_free() for _ in range(need)]
        for b in new_blocks:
            self.ref_counts[b] = 1
        request.block_table.extend(new_blocks)
        if self.bus.active:
            self._emit(what, request.request_id, new_blocks, first_logical)
        return new_blocks

    def rollback(self, request: Request, num_blocks: int) -> int:
        """Speculative decoding: keep the request's first num_blocks blocks and free the rest (blocks that hold no
        committed token after verification; never hashed) to the head of the free queue. Returns how many."""
        table = request.block_table
        tail = table[num_blocks:]
        if not tail:
            return 0
        for b in reversed(tail):
            assert self.ref_counts[b] == 1 and not self.block_hash[b], "a rolled-back block is private and unhashed"
            self.ref_counts[b] = 0
            self.free_queue[b] = None
            self.free_queue.move_to_end(b, last=False)
        del table[num_blocks:]
        if self.bus.active:
            self._emit(SPEC_ROLLBACK, request.request_id, tail, num_blocks)
        return len(tail)

    def free(self, request: Request) -> None:
        """Release every block the request holds (finish or preemption)."""
        table = request.block_table
        if not table:
            return
        for b in reversed(table):  # tail first, so a chain's head stays cached longest
            self.ref_counts[b] -= 1
            if self.ref_counts[b] > 0:
                self.num_shared_extra -= 1
            elif self.block_hash[b]:
                self.free_queue[b] = None  # tail: most recently used
                self.num_cached_free += 1
            else:
                self.free_queue[b] = None
                self.free_queue.move_to_end(b, last=False)  # head: reused first
        if self.bus.active:
            self._emit(FREE, request.request_id, table, 0)
        request.block_table = []
        request.block_hashes = []

    def _pop_free(self) -> int:
        b, _ = self.free_queue.popitem(last=False)
        h = self.block_hash[b]
        if h:
            del self.hash_to_block[h]
            self.block_hash[b] = 0
            self.block_key[b] = None
            self.num_cached_free -= 1
            if self.bus.active:
                self.bus.emit(BlockEvent(self.bus.clock(), self.step, EVICT, -1, (b,), -1, (0,), (h,)))
        return b

    def _emit(self, what: str, request_id: int, blocks: Sequence[int], logical_index: int) -> None:
        self.bus.emit(BlockEvent(
            self.bus.clock(), self.step, what, request_id, tuple(blocks), logical_index,
            tuple(self.ref_counts[b] for b in blocks), tuple(self.block_hash[b] for b in blocks),
        ))

    # --- views ------------------------------------------------------------------------
    def cached_block_ids(self) -> set[int]:
        return {b for b in self.free_queue if self.block_hash[b]}

    def free_block_ids(self) -> set[int]:
        return {b for b in self.free_queue if not self.block_hash[b]}
