"""Schedulers: continuous batching with chunked prefill and preemption, and the static baseline.

Both hand the runner a SchedulerOutput: which requests run this step and how
many tokens each computes ("tokens to compute", not prefill-or-decode).

continuous: running requests first (FCFS), then waiting ones, under a token
    budget (max_num_batched_tokens) and a sequence cap (max_num_seqs). With
    chunked prefill a long prompt is cut to what the budget leaves, so prefill
    chunks share steps with decodes. When the pool runs dry the newest running
    request is preempted (its blocks freed; it is recomputed later).
static: fixed batches. A batch is admitted only when the previous one has
    completely finished; each request reserves KV for the batch's longest prompt
    plus its longest output up front, and keeps it until the whole batch ends.
    Like a padded batch, it also computes (and discards) padding: shorter prompts
    are padded to the longest, and finished members keep decoding a pad token
    until the batch ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvscope.engine.block_manager import BlockManager
from kvscope.engine.request import Request, RequestStatus
from kvscope.inspector.events import (
    PREEMPTED, RESUMED, SCHEDULED, EventBus, RequestEvent, now_ns,
)


@dataclass(slots=True)
class ScheduledRequest:
    """A request and how many tokens it computes this step.

    is_prefill_step: the request works through tokens it already has (a prompt chunk, or a
    recompute after preemption) rather than decoding its one newest token.
    """

    request: Request
    num_tokens: int
    is_prefill_step: bool = False

    @classmethod
    def of(cls, request: Request, num_tokens: int) -> "ScheduledRequest":
        pending = request.num_tokens - request.num_computed_tokens
        return cls(request, num_tokens, pending > 1 or request.num_output_tokens == 0)


@dataclass(slots=True)
class SchedulerOutput:
    """num_padding_tokens: extra tokens the static baseline computes and throws away (shorter prompts padded
    to the longest; seats of finished batch members still decoding), as a padded batch does."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_padding_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    """Continuous batching (see module docstring)."""

    policy = "continuous"

    def __init__(self, block_manager: BlockManager, bus: EventBus, max_num_seqs: int,
                 max_num_batched_tokens: int, chunked_prefill: bool) -> None:
        self.kv = block_manager
        self.bus = bus
        self.max_num_seqs = max_num_seqs
        self.token_budget = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.step = -1
        self.num_preemptions = 0

    # --- queue management -------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, request: Request) -> None:
        """A request is done: drop it from the running set and free its blocks."""
        self.running.remove(request)
        self.kv.free(request)

    def live_requests(self) -> list[Request]:
        """Requests that hold blocks now."""
        return [r for r in self.running if r.block_table]

    # --- one step ---------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.token_budget
        scheduled_ids: set[int] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate(req, n):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is req:
                    break
            else:
                out.scheduled.append(ScheduledRequest.of(req, n))
                scheduled_ids.add(req.request_id)
                budget -= n
                i += 1
                continue
            # req itself was preempted; the list shrank, i now points past the end or at the next one

        if not out.preempted:
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                req = self.waiting[0]
                if not self._admit(req, budget, out):
                    break
                budget -= out.scheduled[-1].num_tokens
        return out

    def _admit(self, req: Request, budget: int, out: SchedulerOutput) -> bool:
        hits = self.kv.find_cached_prefix(req) if req.num_computed_tokens == 0 else []
        remaining = req.num_tokens - len(hits) * self.kv.block_size
        if not self.chunked_prefill and remaining > budget:
            return False
        n = min(remaining, budget)
        # count blocks that leaving the cache would cost before touching anything
        hit_free = sum(1 for b in hits if self.kv.ref_counts[b] == 0)
        total_blocks = -(-(len(hits) * self.kv.block_size + n) // self.kv.block_size)
        if total_blocks - len(hits) + hit_free > self.kv.num_free_blocks:
            return False
        if hits:
            self.kv.take_cached_prefix(req, hits)
        else:
            req.num_cached_tokens = 0
        ok = self.kv.allocate(req, n)
        assert ok
        self.waiting.popleft()
        was_preempted = req.status is RequestStatus.PREEMPTED
        req.status = RequestStatus.RUNNING
        self.running.append(req)
        out.scheduled.append(ScheduledRequest.of(req, n))
        if self.bus.active:
            self.bus.emit(RequestEvent(now_ns(), self.step, req.request_id,
                                       RESUMED if was_preempted else SCHEDULED, req.num_prompt_tokens, req.num_output_tokens,
                                       req.num_computed_tokens, req.max_tokens))
        return True

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        out.preempted.append(req)
        if self.bus.active:
            self.bus.emit(RequestEvent(now_ns(), self.step, req.request_id, PREEMPTED, req.num_prompt_tokens,
                                       req.num_output_tokens, 0, req.max_tokens))


class StaticScheduler(Scheduler):
    """Fixed batches with max-length reservations (the baseline; see module docstring)."""

    policy = "static"

    def __init__(self, block_manager: BlockManager, bus: EventBus, max_num_seqs: int,
                 max_num_batched_tokens: int, chunked_prefill: bool, max_model_len: int) -> None:
        super().__init__(block_manager, bus, max_num_seqs, max_num_batched_tokens, chunked_prefill)
        self.max_model_len = max_model_len
        self.batch: list[Request] = []

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.batch)

    def finish(self, request: Request) -> None:
        """Finished requests keep their reservation until the whole batch is done."""
        self.running.remove(request)
        if not self.running:
            for r in self.batch:
                self.kv.free(r)
            self.batch = []

    def live_requests(self) -> list[Request]:
        return list(self.batch)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        if not self.batch:
            self._form_batch(out)
            return out
        for req in self.running:
            out.scheduled.append(ScheduledRequest.of(req, req.num_tokens - req.num_computed_tokens))
        out.num_padding_tokens = len(self.batch) - len(self.running)  # finished seats still decode
        return out

    def _form_batch(self, out: SchedulerOutput) -> None:
        candidates: list[Request] = []
        longest_prompt = 0
        longest_output = 0
        while self.waiting and len(candidates) < self.max_num_seqs:
            req = self.waiting[0]
            lp = max(longest_prompt, req.num_prompt_tokens)
            lo = max(longest_output, req.max_tokens)
            reserve = min(lp + lo, self.max_model_len)
            per_req = -(-reserve // self.kv.block_size)
            if per_req * (len(candidates) + 1) > self.kv.num_free_blocks:
                break
            candidates.append(self.waiting.popleft())
            longest_prompt, longest_output = lp, lo
        reserve = min(longest_prompt + longest_output, self.max_model_len)
        out.num_padding_tokens = sum(longest_prompt - r.num_prompt_tokens for r in candidates)
        for req in candidates:
            ok = self.kv.allocate(req, reserve)
            assert ok
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            self.batch.append(req)
            out.scheduled.append(ScheduledRequest.of(req, req.num_tokens - req.num_computed_tokens))
            if self.bus.active:
                self.bus.emit(RequestEvent(now_ns(), self.step, req.request_id, SCHEDULED, req.num_prompt_tokens,
                                           req.num_output_tokens, 0, req.max_tokens))
