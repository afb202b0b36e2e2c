"""Schedulers: continuous batching with chunked prefill and preemption, and the static baseline.

Both hand the runner a SchedulerOutput: which requests run this step and how
many tokens each computes ("tokens to compute", not prefill-or-decode).

continuous: running requests first (FCFS), then waiting ones, under a token
    budget (max_num_batched_tokens) and a sequence cap (max_num_seqs). With
    chunked prefill a long prompt is cut to what the budget leaves, so prefill
    chunks share steps with decodes. When the pool runs dry the newest running
    request is preempted (its blocks freed; it is recomputed later). With speculative
    decoding, decoding requests then get up to k draft slots each from the budget and
    the blocks left (never by preempting anyone); after verification the rejected
    slots are rolled back.
With a KV connector (disaggregation, kvscope.engine.core.kv_connector) a prefill engine pins a finished
prompt's blocks for a decode engine instead of freeing them, and a decode engine admits a request whose
prompt ran elsewhere by allocating blocks for its K/V (`loading`, status waiting_for_remote_kvs) that the
step's kv_load phase fills; once they land (settle_loads) it runs on from its first token.
Without a KV cache (cache.kv_cache false, the baseline) a request that got its token has its computed count
set back to 0, so its next step recomputes its whole prefix (in one step, or in chunks when the budget is
short); its blocks stay its own, as the step's scratch.
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
from typing import TYPE_CHECKING

from kvscope.engine.core.block_manager import BlockManager
from kvscope.engine.core.math_utils import cdiv
from kvscope.engine.core.request import Request, RequestStatus
from kvscope.engine.core.stop_check import check_stop
from kvscope.events.bus import EventBus
from kvscope.events.records import RequestEvent
from kvscope.events.vocabulary import FINISHED, FIRST_TOKEN, KV_LOAD_ALLOC, PREEMPTED, RESUMED, SCHEDULED, SPEC_ALLOC

if TYPE_CHECKING:
    from kvscope.config.recipe import SchedulerSpec, SpeculativeSpec
    from kvscope.engine.core.kv_connector import KVConnector
    from kvscope.engine.model.tokenizer import Tokenizer


@dataclass(slots=True)
class ScheduledRequest:
    """A request and how many tokens it computes this step.

    is_prefill_step: the request works through tokens it already has (a prompt chunk, or a
    recompute after preemption) rather than decoding its one newest token.
    num_draft_slots: draft tokens reserved for it (speculative decoding); num_tokens counts the drafts
    the drafter then proposed (SchedulerOutput.trim_drafts).
    """

    request: Request
    num_tokens: int
    is_prefill_step: bool = False
    num_draft_slots: int = 0

    @classmethod
    def of(cls, request: Request, num_tokens: int) -> ScheduledRequest:
        pending = request.num_tokens - request.num_computed_tokens
        return cls(request, num_tokens, pending > 1 or request.num_output_tokens == 0)


@dataclass(slots=True)
class SchedulerOutput:
    """num_padding_tokens: extra tokens the static baseline computes and throws away (shorter prompts padded
    to the longest; seats of finished batch members still decoding), as a padded batch does."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_padding_tokens: int = 0
    num_tokens: int = 0  # the scheduled requests' tokens
    drafting: list[ScheduledRequest] = field(default_factory=list)  # decodes with draft slots
    spec_results: list[SpecResult] = field(default_factory=list)    # their verification (after update)

    def add(self, request: Request, num_tokens: int) -> None:
        """Schedule num_tokens of `request` in this step."""
        self.scheduled.append(ScheduledRequest.of(request, num_tokens))
        self.num_tokens += num_tokens

    def add_draft_slots(self, s: ScheduledRequest, k: int) -> None:
        s.num_draft_slots = k
        s.num_tokens += k
        self.num_tokens += k
        self.drafting.append(s)

    def trim_drafts(self) -> None:
        """After the drafter: each drafting request computes its one token plus the drafts it was given."""
        for s in self.drafting:
            proposed = len(s.request.spec_token_ids)
            self.num_tokens -= s.num_tokens - 1 - proposed
            s.num_tokens = 1 + proposed


@dataclass(slots=True)
class SpecResult:
    """One request's verification in a step (the step probe turns it into a SpecDecode event)."""

    request_id: int
    num_draft_slots: int
    num_draft_tokens: int
    num_accepted: int
    num_emitted: int  # tokens appended to its output (the accepted drafts and one more, unless it stopped)
    rolled_back_slots: int
    rolled_back_blocks: int


class Scheduler:
    """Continuous batching (see module docstring). The engine owns the requests; the scheduler decides
    which of them run, asks the block manager for their KV blocks, and after the forward pass advances them
    (update), finishing those that stop."""

    policy = "continuous"

    def __init__(self, block_manager: BlockManager, bus: EventBus, spec: SchedulerSpec, max_model_len: int,
                 tokenizer: Tokenizer, speculative: SpeculativeSpec | None = None,
                 connector: KVConnector | None = None, keep_kv: bool = True) -> None:
        self.speculative = speculative
        self.keep_kv = keep_kv  # False: the no-KV-cache baseline (every step recomputes each prefix)
        self.connector = connector
        self.block_manager = block_manager
        self.bus = bus
        self.max_num_seqs = spec.max_num_seqs
        self.token_budget = spec.max_num_batched_tokens
        self.chunked_prefill = spec.chunked_prefill
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.loading: list[Request] = []  # admitted, blocks held, K/V coming from another engine
        self.step = -1
        self.num_preemptions = 0

    # --- queue management -------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.loading)

    def finish(self, request: Request, reason: str = "") -> None:
        """A request is done: drop it from the running set and free its blocks (or, on a prefill engine whose
        request asked for a remote decode and reached its max_tokens, pin them for the transfer)."""
        self.running.remove(request)
        if self.connector is not None and reason == "length" and request.do_remote_decode:
            request.kv_transfer_params = self.connector.request_finished(request)
            if request.kv_transfer_params is not None:
                return
        self.block_manager.free(request)

    def live_requests(self) -> list[Request]:
        """Requests that hold blocks now (on a prefill engine: finished ones pinned for a transfer too)."""
        live = [r for r in self.running + self.loading if r.block_table]
        if self.connector is not None and self.connector.pinned:
            live += [pin.request for pin in self.connector.pinned.values()]
        return live

    @property
    def num_preempted_waiting(self) -> int:
        """Requests back in the queue after a preemption."""
        return sum(1 for r in self.waiting if r.status is RequestStatus.PREEMPTED)

    # --- one step ---------------------------------------------------------------------
    def schedule(self, step: int) -> SchedulerOutput:
        """Which requests run in `step` and how many tokens each computes (their blocks allocated)."""
        self.step = self.block_manager.step = step
        out = SchedulerOutput()
        if self.connector is not None and self.connector.pinned:
            self.connector.expire()
        budget = self.token_budget
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while self.block_manager.allocate_slots(req, n) is None:
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is req:
                    break
            else:
                out.add(req, n)
                budget -= n
                i += 1
            # when req itself was preempted the list shrank: i points past the end or at the next one

        if self.speculative is not None:
            budget = self._reserve_draft_slots(out, budget)
        if not out.preempted:
            while self.waiting and budget > 0 and len(self.running) + len(self.loading) < self.max_num_seqs:
                taken = self._admit(self.waiting[0], budget, out)
                if taken is None:
                    break
                budget -= taken
        return out

    def update(self, out: SchedulerOutput, sampled: list[Request], tokens: list[list[int] | None]) -> list[Request]:
        """After the forward pass (vLLM's update_from_output): every scheduled request has computed its tokens
        (its newly full blocks join the prefix cache), each sampled request gets its token, and those that
        stop are finished and freed; one whose sampling failed (None) ends with reason "error". Returns the
        finished requests. A request with drafts gets its accepted drafts and one more token (a run that a stop
        cuts short), and its rejected slots are rolled back."""
        for s in out.scheduled:
            s.request.num_computed_tokens += s.num_tokens
            if not s.num_draft_slots:  # a drafting request's blocks are hashed once its drafts are settled
                self.block_manager.cache_full_blocks(s.request)
        stopping: list[tuple[Request, str]] = []
        for req, run in zip(sampled, tokens):
            if run is None:  # its sampling failed (parameters poisoned after admission)
                stopping.append((req, "error"))
                continue
            for token in run:
                req.token_ids.append(token)
                if req.num_output_tokens == 1:
                    req.first_token_ts = self.bus.clock()
                    self._emit(req, FIRST_TOKEN, req.first_token_ts)
                reason = check_stop(req, self.tokenizer)
                if reason:
                    stopping.append((req, reason))
                    break
        if not self.keep_kv:  # the no-KV-cache baseline: nothing computed is reused; the blocks stay as scratch
            for req in sampled:
                req.num_computed_tokens = 0
        if out.drafting:
            verified = {req.request_id: run for req, run in zip(sampled, tokens)}
            for s in out.drafting:
                self._settle_drafts(s, verified.get(s.request.request_id), out)
        for req, reason in stopping:
            self.finish(req, reason)
            self._finished(req, reason)
        return [req for req, _ in stopping]

    def abort(self, request: Request) -> bool:
        """End a queued or running request at the caller's wish (reason "abort"); False if it already ended."""
        if request.status is RequestStatus.FINISHED:
            return False
        if request in self.running:
            self.finish(request)
        elif request in self.loading:  # mid-transfer: its blocks here, and the producer's pins
            self.loading.remove(request)
            self.block_manager.free(request)
        else:
            self.waiting.remove(request)
        if self.connector is not None and request.kv_transfer_params is not None:
            self.connector.request_aborted(request)
        self._finished(request, "abort")
        return True

    def abort_unservable(self) -> list[Request]:
        """Nothing runs and the head of the queue cannot be admitted: end it (reason abort) rather than spin."""
        if self.running or self.loading or not self.waiting:
            return []
        req = self.waiting.popleft()
        self._finished(req, "abort")
        return [req]

    # --- speculative decoding ------------------------------------------------------------
    def _reserve_draft_slots(self, out: SchedulerOutput, budget: int) -> int:
        """Give each decoding request up to k draft slots from what the budget and the pool have left (after
        every running request has its own token: drafts never preempt). Returns the budget left."""
        spec = self.speculative
        assert spec is not None
        for s in out.scheduled:
            if budget <= 0:
                break
            req = s.request
            if s.num_tokens != 1 or req.num_tokens - req.num_computed_tokens != 1:
                continue  # prefill chunks, recomputes
            k = min(req.num_spec_tokens or spec.num_speculative_tokens, budget,
                    req.max_tokens - req.num_output_tokens - 1)
            if k > 0 and self.block_manager.allocate_slots(req, 1 + k, what=SPEC_ALLOC) is not None:
                out.add_draft_slots(s, k)
                budget -= k
        return budget

    def _settle_drafts(self, s: ScheduledRequest, run: list[int] | None, out: SchedulerOutput) -> None:
        """After verification: keep the K/V of the committed tokens (the one computed before the drafts and the
        accepted drafts the request kept), free the blocks that hold no committed token, adapt k."""
        req = s.request
        proposed = len(req.spec_token_ids)
        accepted = len(run) - 1 if run else 0  # the verifier appends the accepted drafts and one more token
        before = req.num_computed_tokens - s.num_tokens  # computed before this step: all but its newest token
        appended = req.num_tokens - before - 1
        req.num_computed_tokens = before + 1 + min(accepted, appended)  # a stop inside the run drops the rest
        bm = self.block_manager
        blocks = bm.rollback(req, cdiv(req.num_tokens, bm.block_size))
        bm.cache_full_blocks(req)
        if proposed:
            out.spec_results.append(SpecResult(req.request_id, s.num_draft_slots, proposed, accepted, appended,
                                               s.num_draft_slots - accepted, blocks))
            spec = self.speculative
            assert spec is not None  # nothing drafts without it
            if spec.adaptive:
                k = req.num_spec_tokens or spec.num_speculative_tokens
                k = min(k + 2, spec.max_speculative_tokens) if accepted == proposed else max(1, k - 1)
                req.num_spec_tokens = k
        req.spec_token_ids = []
        req.draft_probs = None

    # --- disaggregation ------------------------------------------------------------------
    def settle_loads(self) -> list[Request]:
        """After the kv_load phase: requests whose K/V landed join the running set (their prompt computed, their
        first token out); those whose transfer failed end with reason "error". Returns the ended ones."""
        assert self.connector is not None
        landed, failed = self.connector.get_finished()
        for req in landed:
            if req.status is RequestStatus.FINISHED:  # aborted meanwhile
                continue
            self.loading.remove(req)
            params = req.kv_transfer_params
            assert params is not None  # a loading request is a remote one: it came with its transfer's params
            req.num_computed_tokens = params.num_tokens
            req.kv_transfer_params = None  # a later preemption recomputes here, like any other request
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            self.block_manager.cache_full_blocks(req)
            req.first_token_ts = self.bus.clock()
            self._emit(req, FIRST_TOKEN, req.first_token_ts)
        ended = []
        for req, error in failed:
            if req.status is RequestStatus.FINISHED:
                continue
            self.loading.remove(req)
            self.block_manager.free(req)
            self._finished(req, "error", error)
            ended.append(req)
        return ended

    def _admit_remote(self, req: Request) -> int | None:
        """Admit a request whose prompt another engine ran: blocks for its K/V (past local prefix-cache hits) and
        its first token; it waits in `loading` until the kv_load phase fills them. Takes no token budget."""
        assert self.connector is not None
        bm = self.block_manager
        hits = bm.find_cached_prefix(req)
        external = self.connector.get_num_new_matched_tokens(req, len(hits) * bm.block_size)
        if bm.allocate_slots(req, external + 1, hits, what=KV_LOAD_ALLOC) is None:
            return None
        req.num_cached_tokens = len(hits) * bm.block_size
        self.waiting.popleft()
        req.status = RequestStatus.WAITING_FOR_REMOTE_KVS
        self.loading.append(req)
        self.connector.update_state_after_alloc(req, external)
        self._emit(req, SCHEDULED)
        return 0

    # --- helpers ----------------------------------------------------------------------
    def _admit(self, req: Request, budget: int, out: SchedulerOutput) -> int | None:
        """Admit the head of the queue if the budget and the pool allow; the budget it takes (None: it waits)."""
        if req.kv_transfer_params is not None and self.connector is not None:
            return self._admit_remote(req)
        hits = self.block_manager.find_cached_prefix(req) if req.num_computed_tokens == 0 else []
        remaining = req.num_tokens - len(hits) * self.block_manager.block_size
        resumed = req.status is RequestStatus.PREEMPTED  # recomputed in chunks even when prompts are not (vLLM)
        if not self.chunked_prefill and not resumed and remaining > budget:
            return None
        n = min(remaining, budget)
        if self.block_manager.allocate_slots(req, n, hits) is None:
            return None
        req.num_cached_tokens = len(hits) * self.block_manager.block_size
        self.waiting.popleft()
        was_preempted = req.status is RequestStatus.PREEMPTED
        req.status = RequestStatus.RUNNING
        self.running.append(req)
        out.add(req, n)
        self._emit(req, RESUMED if was_preempted else SCHEDULED)
        return n

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self.block_manager.free(req)
        req.spec_token_ids = []  # a preempted request's drafts are dropped with its blocks
        req.draft_probs = None
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        out.preempted.append(req)
        self._emit(req, PREEMPTED)

    def _finished(self, req: Request, reason: str, detail: str = "") -> None:
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.finish_detail = detail
        req.finished_ts = self.bus.clock()
        self._emit(req, FINISHED, req.finished_ts, reason)

    def _emit(self, req: Request, what: str, ts: int = 0, reason: str = "") -> None:
        if self.bus.active:
            self.bus.emit(RequestEvent(ts or self.bus.clock(), self.step, req.request_id, what, req.num_prompt_tokens,
                                       req.num_output_tokens, req.num_computed_tokens, req.max_tokens, reason))


class StaticScheduler(Scheduler):
    """Fixed batches with max-length reservations (the baseline; see module docstring)."""

    policy = "static"

    def __init__(self, block_manager: BlockManager, bus: EventBus, spec: SchedulerSpec, max_model_len: int,
                 tokenizer: Tokenizer) -> None:
        super().__init__(block_manager, bus, spec, max_model_len, tokenizer)
        self.batch: list[Request] = []

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.batch)

    def finish(self, request: Request, reason: str = "") -> None:
        """Finished requests keep their reservation until the whole batch is done."""
        self.running.remove(request)
        if not self.running:
            for r in self.batch:
                self.block_manager.free(r)
            self.batch = []

    def live_requests(self) -> list[Request]:
        return list(self.batch)

    def schedule(self, step: int) -> SchedulerOutput:
        self.step = self.block_manager.step = step
        out = SchedulerOutput()
        if not self.batch:
            self._form_batch(out)
            return out
        for req in self.running:
            out.add(req, req.num_tokens - req.num_computed_tokens)
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
            per_req = cdiv(min(lp + lo, self.max_model_len), self.block_manager.block_size)
            if not self.block_manager.can_allocate(per_req * (len(candidates) + 1)):
                break
            candidates.append(self.waiting.popleft())
            longest_prompt, longest_output = lp, lo
        reserve = min(longest_prompt + longest_output, self.max_model_len)
        out.num_padding_tokens = sum(longest_prompt - r.num_prompt_tokens for r in candidates)
        for req in candidates:
            blocks = self.block_manager.allocate_slots(req, reserve)
            assert blocks is not None
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            self.batch.append(req)
            out.add(req, req.num_tokens - req.num_computed_tokens)
            self._emit(req, SCHEDULED)


def make_scheduler(block_manager: BlockManager, bus: EventBus, spec: SchedulerSpec, max_model_len: int,
                   tokenizer: Tokenizer, speculative: SpeculativeSpec | None = None,
                   connector: KVConnector | None = None, keep_kv: bool = True) -> Scheduler:
    """The scheduler of the recipe's policy (continuous, with drafts if `speculative`, transfers through
    `connector`, and without reusing K/V unless `keep_kv`; or static)."""
    if spec.policy == "static":
        return StaticScheduler(block_manager, bus, spec, max_model_len, tokenizer)
    return Scheduler(block_manager, bus, spec, max_model_len, tokenizer, speculative, connector, keep_kv)
