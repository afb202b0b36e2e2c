"""The contiguous allocator: the baseline paging replaces (`cache.allocator: contiguous`).

Each request takes, at its first allocation, one contiguous range of blocks long enough for its whole
maximum length (prompt + max_tokens, within max_model_len), found first-fit over the pool in address
order, and gives it back when it finishes. Nothing is shared (no prefix cache) and nothing grows later,
so the pool suffers what paging removes: the reserved-but-unwritten tail of every range (internal waste)
and external fragmentation, free blocks scattered in holes none of which is long enough for the next
request, which then waits although enough memory is free. Both are counted: `largest_free_run()` (the
KV snapshot's largest_free_run) and `refused_with_memory_free` (requests ever refused a range while the
pool held enough free blocks).

The KV tensors stay paged: a range is a block table of consecutive physical blocks, so the attention
kernels read it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvscope.engine.core.block_manager import BlockManager
from kvscope.engine.core.math_utils import cdiv
from kvscope.engine.core.request import Request
from kvscope.events.bus import EventBus
from kvscope.events.vocabulary import ALLOC


class ContiguousBlockManager(BlockManager):
    """First-fit contiguous max-length ranges over the same pool (the prefix cache off)."""

    def __init__(self, num_blocks: int, block_size: int, bus: EventBus, max_model_len: int) -> None:
        super().__init__(num_blocks, block_size, False, bus)
        self.max_model_len = max_model_len
        self._refused: set[int] = set()

    @property
    def refused_with_memory_free(self) -> int:
        return len(self._refused)

    def reservation(self, request: Request) -> int:
        """Blocks of the request's range: its whole maximum length."""
        return cdiv(min(request.num_prompt_tokens + request.max_tokens, self.max_model_len), self.block_size)

    def free_runs(self) -> list[tuple[int, int]]:
        """(first block, length) of every run of free blocks, in address order."""
        runs: list[tuple[int, int]] = []
        start = -1
        for b, ref in enumerate(self.ref_counts):
            if ref == 0 and start < 0:
                start = b
            elif ref != 0 and start >= 0:
                runs.append((start, b - start))
                start = -1
        if start >= 0:
            runs.append((start, self.num_blocks - start))
        return runs

    def largest_free_run(self) -> int:
        return max((n for _, n in self.free_runs()), default=0)

    def allocate_slots(self, request: Request, num_new_tokens: int, new_computed_blocks: Sequence[int] = (),
                       what: str = ALLOC) -> list[int] | None:
        """A request's first allocation takes its whole range (first fit) or nothing; later ones fit inside it."""
        assert not new_computed_blocks, "the contiguous allocator has no prefix cache"
        need = self.blocks_needed(request, num_new_tokens)
        if request.block_table:
            return [] if need <= 0 else None  # past its maximum length: never, the range holds it all
        size = max(self.reservation(request), need)
        start = next((s for s, n in self.free_runs() if n >= size), None)
        if start is None:
            if size <= self.num_free_blocks:  # the memory is there, but not in one piece
                self._refused.add(request.request_id)
            return None
        blocks = list(range(start, start + size))
        for b in blocks:
            del self.free_queue[b]
            self.ref_counts[b] = 1
        request.block_table = blocks
        if self.bus.active:
            self._emit(what, request.request_id, blocks, 0)
        return blocks


def make_block_manager(allocator: str, num_blocks: int, block_size: int, enable_prefix_caching: bool,
                       bus: EventBus, max_model_len: int) -> BlockManager:
    """The recipe's allocator: paged (BlockManager) or contiguous (ContiguousBlockManager)."""
    if allocator == "contiguous":
        return ContiguousBlockManager(num_blocks, block_size, bus, max_model_len)
    return BlockManager(num_blocks, block_size, enable_prefix_caching, bus)
