"""Engine state rebuilt from events alone: block pool, block tables and request lifecycles.

EngineView is a bus subscriber (an EventFold: `view.apply(event)` or `view(event)`) that works the
same on a live bus and on a replayed recording. It knows nothing of the engine's objects: only
the records of kvscope.events. Pure python, no torch.

Block semantics (see BlockEvent):
    alloc / prefix_hit  the request's table gets block_ids at logical_index..; ref counts
                        are taken from the event (1 / +1 when the event carries none)
    cached              the blocks get their chain hash
    free                the request drops block_ids from its table; ref counts from the event
                        (-1 when it carries none); at 0 a hashed block stays cached
    evict               a cached, unreferenced block loses its hash (it is plain free again)
"""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.events.records import BlockEvent, KVSnapshot, RequestEvent, RunInfo, StepBegin, StepEnd
from kvscope.events.vocabulary import (
    ALLOC,
    ARRIVED,
    CACHED,
    EVICT,
    FINISHED,
    FIRST_TOKEN,
    FREE,
    KV_LOAD_ALLOC,
    KV_PIN,
    PREEMPTED,
    PREFIX_HIT,
    RESUMED,
    SCHEDULED,
    SPEC_ALLOC,
    SPEC_ROLLBACK,
)
from kvscope.inspector.event_fold import EventFold

WAITING = "waiting"
RUNNING = "running"
PREEMPTED_STATUS = "preempted"
FINISHED_STATUS = "finished"

_STATUS_AFTER = {
    ARRIVED: WAITING,
    SCHEDULED: RUNNING,
    RESUMED: RUNNING,
    FIRST_TOKEN: RUNNING,
    PREEMPTED: PREEMPTED_STATUS,
    FINISHED: FINISHED_STATUS,
}


@dataclass(slots=True)
class RequestView:
    """One request as the events describe it."""

    request_id: int
    status: str = WAITING
    prompt_tokens: int = 0
    output_tokens: int = 0
    computed_tokens: int = 0
    max_tokens: int = 0
    arrived_ts: int = 0
    first_token_ts: int | None = None
    finished_ts: int | None = None
    finish_reason: str = ""
    preemptions: int = 0


class EngineView(EventFold):
    """The engine's KV pool, block tables and requests, as of the last applied event.

    `touched_blocks` collects the ids of blocks whose ref count, hash or owner may have changed; a
    consumer that redraws the pool (the TUI's block map) takes them with `take_touched_blocks()` at
    each redraw and recomputes only those. `generation` counts resets (a RunInfo): after one,
    everything has changed. `rolled_back` holds the blocks speculative decoding handed back in the
    current step (the block map flashes them until the next step begins). `pinned` holds the blocks of
    finished requests kept for a KV transfer (disaggregation: until the decode side has read them).
    """

    def __init__(self) -> None:
        self.info: RunInfo | None = None
        self.step: int = -1
        self.generation = 0
        self.block_refs: list[int] = []
        self.block_hash: list[int] = []
        self.block_owner: list[int] = []
        self.touched_blocks: set[int] = set()
        self.rolled_back: set[int] = set()
        self.pinned: set[int] = set()
        self.tables: dict[int, list[int]] = {}
        self.requests: dict[int, RequestView] = {}
        self.last_step: StepEnd | None = None
        self.last_kv: KVSnapshot | None = None
        self._settled: set[int] = set()  # requests whose first_token / finished event already holds this step's counts

    apply = EventFold.__call__  # view.apply(event): fold one event into the view

    def take_touched_blocks(self) -> set[int]:
        """The blocks touched since the last call (and forget them): what a redraw must recompute."""
        touched, self.touched_blocks = self.touched_blocks, set()
        return touched

    # ------------------------------------------------------------------ events
    def on_step_begin(self, ev: StepBegin) -> None:
        self.step = ev.step
        self._settled = set()
        if self.rolled_back:  # last step's rollbacks stop flashing
            self.touched_blocks |= self.rolled_back
            self.rolled_back = set()

    def on_step_end(self, ev: StepEnd) -> None:
        self._apply_progress(ev)
        self.last_step = ev

    def on_kv(self, ev: KVSnapshot) -> None:
        self.last_kv = ev

    def on_run_info(self, ev: RunInfo) -> None:
        self._reset(ev)

    def on_request(self, ev: RequestEvent) -> None:
        req = self.requests.get(ev.request_id)
        if req is None:
            req = RequestView(ev.request_id, arrived_ts=ev.ts)
            self.requests[ev.request_id] = req
        req.status = _STATUS_AFTER.get(ev.what, req.status)
        req.prompt_tokens = ev.prompt_tokens
        req.output_tokens = ev.output_tokens
        req.computed_tokens = ev.computed_tokens
        if ev.max_tokens:
            req.max_tokens = ev.max_tokens
        what = ev.what
        if what == ARRIVED:
            req.arrived_ts = ev.ts
        elif what == FIRST_TOKEN:
            if req.first_token_ts is None:
                req.first_token_ts = ev.ts
            self._settled.add(ev.request_id)
        elif what == PREEMPTED:
            req.preemptions += 1
        elif what == FINISHED:
            req.finished_ts = ev.ts
            req.finish_reason = ev.reason
            self._settled.add(ev.request_id)

    def on_block(self, ev: BlockEvent) -> None:
        what = ev.what
        ids = ev.block_ids
        for b in ids:
            self._ensure_block(b)
        self.touched_blocks.update(ids)
        refs = ev.ref_counts if len(ev.ref_counts) == len(ids) else None
        hashes = ev.hashes if len(ev.hashes) == len(ids) else None
        if what == ALLOC or what == PREFIX_HIT or what == SPEC_ALLOC or what == KV_LOAD_ALLOC:
            table = self.tables.setdefault(ev.request_id, [])
            start = max(ev.logical_index, 0)
            for i, b in enumerate(ids):
                pos = start + i
                if pos < len(table):
                    table[pos] = b
                else:
                    table.extend([-1] * (pos - len(table)))
                    table.append(b)
                self.block_refs[b] = refs[i] if refs else self.block_refs[b] + 1
                if hashes:
                    self.block_hash[b] = hashes[i]
                elif what != PREFIX_HIT:
                    self.block_hash[b] = 0
                if self.block_owner[b] < 0:
                    self.block_owner[b] = ev.request_id
        elif what == FREE or what == SPEC_ROLLBACK:
            if what == SPEC_ROLLBACK:
                self.rolled_back.update(ids)
            self.pinned.difference_update(ids)
            held = self.tables.get(ev.request_id)  # the request's table, if it still has one
            for i, b in enumerate(ids):
                self.block_refs[b] = refs[i] if refs else max(self.block_refs[b] - 1, 0)
                if held is not None:
                    pos = ev.logical_index + i
                    if 0 <= pos < len(held) and held[pos] == b:
                        held[pos] = -1
                    elif b in held:
                        held[held.index(b)] = -1
            if held is not None:
                while held and held[-1] == -1:
                    held.pop()
                if not held:
                    del self.tables[ev.request_id]
            for b in ids:
                if self.block_refs[b] == 0:
                    self.block_owner[b] = -1
                elif self.block_owner[b] == ev.request_id:
                    self.block_owner[b] = self._other_holder(b, ev.request_id)
        elif what == KV_PIN:
            self.pinned.update(ids)
        elif what == CACHED:
            for i, b in enumerate(ids):
                if hashes:
                    self.block_hash[b] = hashes[i]
                if refs:
                    self.block_refs[b] = refs[i]
        elif what == EVICT:
            for i, b in enumerate(ids):
                self.block_hash[b] = 0
                self.block_refs[b] = refs[i] if refs else 0
                if self.block_refs[b] == 0:
                    self.block_owner[b] = -1

    def _apply_progress(self, ev: StepEnd) -> None:
        """Advance computed / output counts by the step's work (request events carry them only at transitions)."""
        settled, requests = self._settled, self.requests
        for rid, n in ev.prefill:
            req = requests.get(rid)
            if req is not None and rid not in settled:
                req.computed_tokens += n
        emitted = dict(ev.sampled) if ev.sampled else {}
        for rid in ev.decode:  # a decode computes its newest token and the drafts it kept (one per emitted token)
            req = requests.get(rid)
            if req is not None and rid not in settled:
                req.computed_tokens += emitted.get(rid, 1)
        for rid, n in ev.sampled:
            req = requests.get(rid)
            if req is not None and rid not in settled:
                req.output_tokens += n

    def _reset(self, info: RunInfo) -> None:
        n = info.num_blocks
        self.info = info
        self.step = info.step
        self.generation += 1
        self.block_refs = [0] * n
        self.block_hash = [0] * n
        self.block_owner = [-1] * n
        self.touched_blocks = set()
        self.rolled_back = set()
        self.pinned = set()
        self.tables = {}
        self.requests = {}
        self.last_step = None
        self.last_kv = None

    def _ensure_block(self, block_id: int) -> None:
        if block_id >= len(self.block_refs):
            grow = block_id + 1 - len(self.block_refs)
            self.block_refs.extend([0] * grow)
            self.block_hash.extend([0] * grow)
            self.block_owner.extend([-1] * grow)

    def _other_holder(self, block_id: int, not_rid: int) -> int:
        for rid, table in self.tables.items():
            if rid != not_rid and block_id in table:
                return rid
        return -1

    # ------------------------------------------------------------------ queries
    def block_state(self, i: int) -> str:
        """"free" | "cached" | "used" | "shared" for physical block i."""
        refs = self.block_refs[i]
        if refs > 1:
            return "shared"
        if refs == 1:
            return "used"
        return "cached" if self.block_hash[i] else "free"

    def free_blocks(self) -> set[int]:
        """Unreferenced blocks that hold no cached prefix."""
        return {i for i, r in enumerate(self.block_refs) if r == 0 and not self.block_hash[i]}

    def cached_blocks(self) -> set[int]:
        """Unreferenced blocks that still hold a hashed prefix (reusable by a prefix hit)."""
        return {i for i, r in enumerate(self.block_refs) if r == 0 and self.block_hash[i]}

    def used_blocks(self) -> set[int]:
        """Blocks referenced by at least one request."""
        return {i for i, r in enumerate(self.block_refs) if r > 0}

    def running(self) -> list[RequestView]:
        return [r for r in self.requests.values() if r.status == RUNNING]

    def waiting(self) -> list[RequestView]:
        """Requests queued for the scheduler: never scheduled, or preempted."""
        return [r for r in self.requests.values() if r.status in (WAITING, PREEMPTED_STATUS)]


__all__ = ["FINISHED_STATUS", "PREEMPTED_STATUS", "RUNNING", "WAITING", "EngineView", "RequestView"]
