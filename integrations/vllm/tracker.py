"""vLLM's scheduler and block pool as kvscope events: after each `schedule()` and `update_from_output()`, the
state vLLM holds is diffed against the state last reported, and the difference goes out as kvscope's events.

Diffing (rather than wrapping every allocator call) makes the stream right by construction: fold it into an
EngineView and the block tables, ref counts and hashes equal vLLM's at each of those points, whatever path
inside vLLM (prefix hits, preemption, eviction, aborts between steps) changed them. The cost is one pass
over the live requests' blocks per call.

What comes out, with vLLM's physical block ids and int request ids in order of arrival:
  RunInfo once (vLLM's model shape, dtype, block size, pool size, scheduler limits; backend "vllm X"),
  per schedule(): StepBegin, request arrivals / scheduled / resumed / preempted, then the blocks' frees,
      evictions, allocations and prefix hits, and blocks newly registered under a hash (cached);
  per update_from_output(): first tokens, finished requests with vLLM's reason, the same block diff (the
      frees of finished requests), a SpecDecode per request that verified drafts, a KernelEvent `forward`
      priced by kvscope's cost model on vLLM's batch,
      StepEnd (prefill chunks, decodes, sampled tokens, phase times, queues) and a KVSnapshot.
vLLM's block 0 is its null block, never handed out: it stays free here. The tracker reads vLLM's objects by
attribute (duck-typed, tested against vLLM 0.32) and imports nothing of vLLM.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.roofline import step_op_costs
from kvscope.engine.checkpoint.formats import config_from_hf
from kvscope.errors import KVScopeError
from kvscope.events.records import (
    BlockEvent,
    KernelEvent,
    KVSnapshot,
    RequestEvent,
    RunInfo,
    SpecDecode,
    StepBegin,
    StepEnd,
)
from kvscope.events.vocabulary import (
    ALLOC,
    ARRIVED,
    CACHED,
    EVICT,
    FINISHED,
    FIRST_TOKEN,
    FREE,
    PREEMPTED,
    PREFIX_HIT,
    RESUMED,
    SCHEDULED,
)

Sink = Callable[[Any], None]
FINISH_REASONS = {"FINISHED_STOPPED": "stop", "FINISHED_LENGTH_CAPPED": "length", "FINISHED_ABORTED": "abort",
                  "FINISHED_IGNORED": "abort", "FINISHED_ERROR": "error", "FINISHED_REPETITION": "stop"}


def hash_id(block_hash: Any) -> int:
    """A kvscope block hash (a positive int; 0 = none) from vLLM's (bytes, or an object holding them)."""
    if block_hash is None:
        return 0
    raw = block_hash if isinstance(block_hash, (bytes, bytearray)) else repr(block_hash).encode()
    return int.from_bytes(bytes(raw[:8]).ljust(8, b"\0"), "big") & (2**63 - 1) or 1


@dataclass(slots=True)
class _Seen:
    """What was last reported of one vLLM request."""

    rid: int
    status: str
    output_tokens: int
    request: Any  # vLLM's Request, kept to read its final status once vLLM has dropped it


class VllmTracker:
    """Turns one vLLM Scheduler's state into kvscope events, sent to `sink` (called on vLLM's engine thread)."""

    def __init__(self, sink: Sink, version: str, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.sink, self.version, self.clock = sink, version, clock
        self.step = 0
        self.info_sent = False
        self.seen: dict[str, _Seen] = {}
        self.next_rid = 0
        self.tables: dict[int, list[int]] = {}  # request id -> block ids, as last reported
        self.hashes: dict[int, int] = {}  # block id -> hash, for blocks that had one when last reported
        self.begin_ts = self.scheduled_ts = 0
        self.block_size = 0
        self.produced: dict[str, int] = {}  # tokens the model runner produced per request in the step being updated
        self.shape: ModelConfig | None = None  # vLLM's model as kvscope's cost model reads it (None: not priced)
        self.elt = 2

    # --- the two points vLLM is observed at ---------------------------------------------------------
    def after_schedule(self, sched: Any, out: Any) -> None:
        """A step was scheduled: its StepBegin, request transitions and block changes."""
        if not self.info_sent:
            self.sink(self.run_info(sched))
            self.info_sent = True
        self.begin_ts = self.clock()
        self.sink(StepBegin(self.begin_ts, self.step))
        preempted = set(getattr(out, "preempted_req_ids", None) or ())
        self._sync_requests(sched, out.num_scheduled_tokens, preempted)
        self._sync_blocks(sched)
        self.scheduled_ts = self.clock()

    def before_update(self, sched: Any, out: Any, runner_out: Any = None) -> None:
        """The tokens the model runner produced per request, before vLLM's stop rules trim them."""
        req_ids, sampled = getattr(runner_out, "req_ids", None), getattr(runner_out, "sampled_token_ids", None)
        self.produced = {r: len(t) for r, t in zip(req_ids, sampled)} if req_ids and sampled else {}

    def after_update(self, sched: Any, out: Any) -> None:
        """The step's tokens are in: first tokens, finishes, freed blocks, StepEnd and the pool's snapshot."""
        update_ts = self.clock()
        stepped = dict(self.seen)  # before finished requests leave it: their last step still counts
        sampled = self._sync_outputs(sched)
        self._sync_blocks(sched)
        prefill, decode = [], []
        for req_id, n in out.num_scheduled_tokens.items():
            seen = stepped.get(req_id)
            if seen is None:
                continue
            req = seen.request
            before = req.num_computed_tokens - n if req.num_computed_tokens >= n else 0
            if before < req.num_prompt_tokens:
                prefill.append((seen.rid, min(n, req.num_prompt_tokens - before)))
            else:
                decode.append(seen.rid)
        self._spec_decodes(sched, out, stepped, self._verified(stepped) or dict(sampled), update_ts)
        if self.shape is not None:
            self._price_forward(out, stepped, update_ts)
        now = self.clock()
        phases = (("schedule", self.begin_ts, self.scheduled_ts), ("forward", self.scheduled_ts, update_ts),
                  ("sample", update_ts, now))
        self.sink(StepEnd(now, self.step, self.begin_ts, out.total_num_scheduled_tokens,
                          int(sched.max_num_scheduled_tokens), tuple(prefill), tuple(decode), tuple(sampled),
                          phases, len(sched.running), len(sched.waiting),
                          len(getattr(out, "preempted_req_ids", None) or ())))
        self.sink(self.kv_snapshot(sched, now))
        self.step += 1

    # --- requests -----------------------------------------------------------------------------------
    def _sync_requests(self, sched: Any, scheduled: dict[str, int], preempted: set[str]) -> None:
        now = self.clock()
        wall = time.time()
        for req_id, req in sched.requests.items():
            seen = self.seen.get(req_id)
            if seen is None:
                seen = self.seen[req_id] = _Seen(self.next_rid, "WAITING", 0, req)
                self.next_rid += 1
                arrived = now - max(int((wall - req.arrival_time) * 1e9), 0)
                self.sink(RequestEvent(arrived, self.step, seen.rid, ARRIVED, req.num_prompt_tokens, 0, 0,
                                       int(req.max_tokens)))
            status = req.status.name
            if req_id in preempted or (status == "PREEMPTED" and seen.status != "PREEMPTED"):
                self._request(seen, PREEMPTED, now, req)
                seen.status = "PREEMPTED"
            elif req_id in scheduled and seen.status != "RUNNING":
                what = RESUMED if seen.status == "PREEMPTED" else SCHEDULED
                computed = req.num_computed_tokens - scheduled[req_id]
                self.sink(RequestEvent(now, self.step, seen.rid, what, req.num_prompt_tokens, req.num_output_tokens,
                                       max(computed, 0), int(req.max_tokens)))
                seen.status = "RUNNING"

    def _sync_outputs(self, sched: Any) -> list[tuple[int, int]]:
        """First tokens and finishes since the last call; (request id, tokens appended) of each that grew."""
        now = self.clock()
        sampled = []
        for req_id, seen in list(self.seen.items()):
            req = sched.requests.get(req_id, seen.request)
            grown = req.num_output_tokens - seen.output_tokens
            if grown > 0:
                sampled.append((seen.rid, grown))
                if seen.output_tokens == 0:
                    self._request(seen, FIRST_TOKEN, now, req)
                seen.output_tokens = req.num_output_tokens
            if req_id not in sched.requests:
                reason = FINISH_REASONS.get(req.status.name, "abort")
                self._request(seen, FINISHED, now, req, reason)
                del self.seen[req_id]
        return sampled

    def _request(self, seen: _Seen, what: str, ts: int, req: Any, reason: str = "") -> None:
        self.sink(RequestEvent(ts, self.step, seen.rid, what, req.num_prompt_tokens, req.num_output_tokens,
                               req.num_computed_tokens, int(req.max_tokens), reason))

    # --- blocks -------------------------------------------------------------------------------------
    def current_tables(self, sched: Any) -> dict[int, list[int]]:
        """Request id -> vLLM's block ids now (the first KV-cache group: a decoder's full attention)."""
        manager = sched.kv_cache_manager.coordinator.single_type_managers[0]
        tables = {}
        for req_id, blocks in manager.req_to_blocks.items():
            seen = self.seen.get(req_id)
            if seen is not None and blocks:
                tables[seen.rid] = [b.block_id for b in blocks]
        return tables

    def _sync_blocks(self, sched: Any) -> None:
        pool = sched.kv_cache_manager.block_pool
        blocks = pool.blocks
        now, step = self.clock(), self.step
        new_tables = self.current_tables(sched)

        def refs(ids: Iterable[int]) -> tuple[int, ...]:
            return tuple(blocks[b].ref_cnt for b in ids)

        def hashes(ids: Iterable[int]) -> tuple[int, ...]:
            return tuple(hash_id(blocks[b].block_hash) for b in ids)

        grown: list[tuple[int, int, list[int]]] = []
        for rid in sorted(set(self.tables) | set(new_tables)):
            old, new = self.tables.get(rid, []), new_tables.get(rid, [])
            keep = 0
            while keep < len(old) and keep < len(new) and old[keep] == new[keep]:
                keep += 1
            if keep < len(old):
                gone = old[keep:]
                self.sink(BlockEvent(now, step, FREE, rid, tuple(gone), keep, refs(gone), hashes(gone)))
            if keep < len(new):
                grown.append((rid, keep, new[keep:]))
        watched = set(self.hashes) | {b for t in new_tables.values() for b in t}
        now_hashed = {b: h for b in watched if (h := hash_id(blocks[b].block_hash))}
        evicted = sorted(b for b, h in self.hashes.items() if now_hashed.get(b) != h)
        if evicted:
            self.sink(BlockEvent(now, step, EVICT, -1, tuple(evicted), -1, refs(evicted), tuple(0 for _ in evicted)))
        for rid, start, ids in grown:  # runs of prefix hits (blocks that kept their hash) and fresh blocks
            run: list[int] = []
            run_hit = False
            for i, b in enumerate(ids):
                hit = b in self.hashes and now_hashed.get(b) == self.hashes[b]
                if run and hit != run_hit:
                    self._grow(now, rid, start + i - len(run), run, run_hit, refs(run), hashes(run))
                    run = []
                run_hit = hit
                run.append(b)
            if run:
                self._grow(now, rid, start + len(ids) - len(run), run, run_hit, refs(run), hashes(run))
        fresh = sorted(b for b, h in now_hashed.items() if self.hashes.get(b) != h)
        if fresh:
            self.sink(BlockEvent(now, step, CACHED, -1, tuple(fresh), -1, refs(fresh), hashes(fresh)))
        self.tables, self.hashes = new_tables, now_hashed

    def _grow(self, ts: int, rid: int, start: int, run: list[int], hit: bool, refs: tuple[int, ...],
              hashes: tuple[int, ...]) -> None:
        self.sink(BlockEvent(ts, self.step, PREFIX_HIT if hit else ALLOC, rid, tuple(run), start, refs, hashes))

    def _verified(self, stepped: dict[str, _Seen]) -> dict[int, int]:
        """Request id -> tokens the model runner produced this step (before stop rules cut them), or {}."""
        return {stepped[r].rid: n for r, n in self.produced.items() if r in stepped}

    def _spec_decodes(self, sched: Any, out: Any, stepped: dict[str, _Seen], grown: dict[int, int], ts: int) -> None:
        """One SpecDecode per request that verified drafts this step, counted as vLLM counts them: the drafts
        scheduled (less those vLLM marked invalid), accepted = tokens the runner produced - 1 (the tokens
        appended - 1 where the runner's output is not at hand)."""
        drafts = getattr(out, "scheduled_spec_decode_tokens", None) or {}
        if not drafts:
            return
        invalid = getattr(out, "num_invalid_spec_tokens", None) or {}
        spec = getattr(sched.vllm_config, "speculative_config", None)
        method = str(getattr(spec, "method", "") or "vllm")
        for req_id, tokens in drafts.items():
            seen = stepped.get(req_id)
            if seen is None or not tokens:
                continue
            proposed = len(tokens) - invalid.get(req_id, 0)
            accepted = max(min(grown.get(seen.rid, 0) - 1, proposed), 0)
            self.sink(SpecDecode(ts, self.step, seen.rid, method, len(tokens), proposed, accepted,
                                 accepted if accepted < proposed else -1, 0, ts - self.scheduled_ts))

    def _price_forward(self, out: Any, stepped: dict[str, _Seen], end: int) -> None:
        """The step's forward as one KernelEvent priced by kvscope's cost model over vLLM's actual batch (its
        query and context lengths): what the TUI's roofline reads (`kvscope attach --kernels`)."""
        assert self.shape is not None
        query_lens, seq_lens = [], []
        for req_id, n in out.num_scheduled_tokens.items():
            seen = stepped.get(req_id)
            if seen is not None:
                query_lens.append(int(n))
                seq_lens.append(int(seen.request.num_computed_tokens))
        if not query_lens:
            return
        costs = step_op_costs(self.shape, query_lens, seq_lens, weight_bytes=self.elt, act_bytes=self.elt,
                              kv_bytes=self.elt)
        self.sink(KernelEvent(end, self.step, "forward", -1, "vllm", self.scheduled_ts, end,
                              f"T={sum(query_lens)} B={len(query_lens)} (estimated)",
                              sum(c.flops for c in costs.values()), int(sum(c.bytes for c in costs.values()))))

    # --- records ------------------------------------------------------------------------------------
    def run_info(self, sched: Any) -> RunInfo:
        cfg = sched.vllm_config
        hf = cfg.model_config.hf_text_config
        heads = int(hf.num_attention_heads)
        kv_heads = int(getattr(hf, "num_key_value_heads", heads) or heads)
        hidden = int(hf.hidden_size)
        head_dim = int(getattr(hf, "head_dim", 0) or hidden // heads)
        layers = int(hf.num_hidden_layers)
        dtype = str(cfg.model_config.dtype).removeprefix("torch.")
        elt = self.elt = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 2)
        try:
            self.shape = config_from_hf(hf.to_dict(), "vLLM's model config")
        except KVScopeError:  # a model kvscope's cost model does not know: no roofline, the rest as usual
            self.shape = None
        self.block_size = int(sched.cache_config.block_size)
        pool = sched.kv_cache_manager.block_pool
        name = cfg.model_config.served_model_name or cfg.model_config.model
        name = name[0] if isinstance(name, (list, tuple)) else name
        return RunInfo(self.clock(), self.step, str(name), layers, heads, kv_heads, head_dim, hidden, dtype,
                       str(cfg.device_config.device_type), f"vllm {self.version}", str(sched.scheduler_config.policy),
                       int(pool.num_gpu_blocks), self.block_size, 2 * layers * kv_heads * head_dim * self.block_size
                       * elt, int(sched.max_num_scheduled_tokens), int(sched.max_num_running_reqs),
                       int(sched.max_model_len), bool(sched.cache_config.enable_prefix_caching))

    def kv_snapshot(self, sched: Any, ts: int) -> KVSnapshot:
        """The pool now: used / cached / free blocks (block 0, vLLM's null block, left out) and slot use."""
        pool = sched.kv_cache_manager.block_pool
        n = int(pool.num_gpu_blocks)
        used = sum(1 for b in pool.blocks[1:] if b.ref_cnt > 0)
        cached = sum(1 for b in pool.blocks[1:] if b.ref_cnt == 0 and b.block_hash is not None)
        filled: dict[int, int] = {}
        bs = self.block_size or int(sched.cache_config.block_size)
        for seen in self.seen.values():
            table = self.tables.get(seen.rid, ())
            computed = seen.request.num_computed_tokens
            for i, b in enumerate(table):
                filled[b] = max(filled.get(b, 0), min(bs, max(computed - i * bs, 0)))
        stored = sum(filled.values())
        return KVSnapshot(ts, self.step, n, bs, used, cached, n - 1 - used - cached, stored,
                          len(filled) * bs - stored)
