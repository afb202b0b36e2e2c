"""The engine: owns the requests, runs scheduler steps, announces each run.

One step = schedule -> prepare -> forward -> sample and update (LLMEngine.step); an engine in a
disaggregated deployment (kv_role) also pins prompts' blocks for another engine or loads another engine's
K/V between schedule and prepare (kvscope.engine.core.kv_connector), and a speculating one drafts there.
The device side (runner, KV pools, attention backend, step probe; real or simulated) is chosen once, by
kvscope.engine.executor.make_executor. The step's instruments (phase times, live ranges, per-op timing, the
step's events) sit beside it in a StepProbe (kvscope.engine.probe.step_probe); with a subscriber on the bus a
step emits StepBegin, request and block events, one KernelEvent per operator, a KVSnapshot and StepEnd.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.contiguous_blocks import make_block_manager
from kvscope.engine.core.kv_connector import KVConnector, KVPeer, KVTransferParams
from kvscope.engine.core.request import Request, RequestOutput
from kvscope.engine.core.request_check import Prompt, RequestCheck, max_model_len
from kvscope.engine.core.scheduler import Scheduler, SchedulerOutput, make_scheduler
from kvscope.engine.core.stop_check import output_text
from kvscope.engine.executor import make_executor
from kvscope.engine.model.loader import LoadedModel, load_for_recipe
from kvscope.engine.probe.op_timer import RangeHook
from kvscope.engine.probe.step_probe import NullProbe, StepProbe
from kvscope.engine.spec.drafter import Drafter, make_drafter
from kvscope.errors import RequestError
from kvscope.events.bus import EventBus
from kvscope.events.records import RequestEvent, RunInfo
from kvscope.events.vocabulary import ARRIVED, Phase


class LLMEngine:
    """Step-level API: add_request, step, has_unfinished (plus reset for a fresh run on the same model); an
    EngineClient (kvscope.engine.engine_client)."""

    def __init__(self, recipe: Recipe, loaded: LoadedModel | None = None, bus: EventBus | None = None,
                 range_hook: RangeHook | None = None, kernel_events: bool = True, kv_role: str | None = None,
                 engine_id: str = "engine") -> None:
        """kv_role: "kv_producer" (a prefill engine) or "kv_consumer" (a decode engine) in a disaggregated
        deployment, whose other engines reach this one as `engine_id`; None for an engine on its own."""
        self.recipe = recipe
        self.kv_role = kv_role
        self.engine_id = engine_id
        self.kv_peers: dict[str, KVPeer] = {}  # producers a consumer reads from, by engine id
        self.loaded = loaded or load_for_recipe(recipe)
        self.bus = bus or EventBus()
        self.config = self.loaded.config
        self.tokenizer = self.loaded.tokenizer
        self.max_model_len = max_model_len(recipe, self.config)
        self.block_size = recipe.cache.block_size
        # the device side, real or simulated (kvscope.engine.executor): runner, KV pools, backend, probe
        ex = self.executor = make_executor(recipe, self.loaded, self.bus, range_hook, kernel_events)
        self.device, self.runner, self.kv_cache, self.sim = ex.device, ex.runner, ex.kv_cache, ex.sim
        self.backend, self.backend_name = ex.backend, ex.backend_name
        self.num_blocks, self.bytes_per_block = ex.num_blocks, ex.bytes_per_block
        self.drafter: Drafter | None = make_drafter(recipe.speculative, self)
        self.probe = ex.step_probe(self)
        self.generator = torch.Generator().manual_seed(recipe.sampling.seed or 0)
        self._lock = threading.RLock()  # add_request / abort from other threads wait for the step in progress
        self.reset()

    def reset(self) -> None:
        """Forget every request and block; the model and the pools stay."""
        self.block_manager = make_block_manager(self.recipe.cache.allocator, self.num_blocks, self.block_size,
                                                self.recipe.cache.prefix_caching, self.bus, self.max_model_len)
        self.connector: KVConnector | None = None
        if self.kv_role is not None:
            self.connector = KVConnector(self.engine_id, self.kv_role, self.bus, self.block_manager,
                                         round(self.recipe.deployment.transfer_timeout_s * 1e9), self.kv_peers,
                                         bytes_per_block=self.bytes_per_block, step=lambda: self.step_id)
        self.scheduler: Scheduler = make_scheduler(self.block_manager, self.bus, self.recipe.scheduler,
                                                   self.max_model_len, self.tokenizer, self.recipe.speculative,
                                                   self.connector, self.recipe.cache.kv_cache)
        self.request_check = RequestCheck(self.recipe, self.config, self.tokenizer, self.num_blocks)
        self.requests: dict[int, Request] = {}
        self.next_request_id = 0
        self.step_id = 0
        self.info_sent = False

    # --- events -----------------------------------------------------------------------
    def emit(self, event: Any) -> None:
        """Emit a run-level event (an arrival, a step's begin); the run's RunInfo always goes out first."""
        if not self.info_sent:
            self.info_sent = True
            self.bus.emit(self.run_info())
        self.bus.emit(event)

    def run_info(self) -> RunInfo:
        cfg, s = self.config, self.recipe.scheduler
        return RunInfo(self.bus.clock(), self.step_id, cfg.name, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
                       cfg.head_dim, cfg.hidden_size, str(self.loaded.dtype).removeprefix("torch."),
                       str(self.device), self.backend_name, s.policy, self.num_blocks, self.block_size,
                       self.bytes_per_block, s.max_num_batched_tokens, s.max_num_seqs, self.max_model_len,
                       self.recipe.cache.prefix_caching)

    # --- requests ---------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, limit: int | None = None) -> list[int]:
        """Token ids of a prompt given as text, token ids or chat messages; RequestError naming what is wrong
        (PromptTooLong, unencoded, for one that surely has `limit` tokens or more)."""
        return self.request_check.encode_prompt(prompt, limit)

    def blocks_needed(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """KV blocks a request holds at its longest (its output cut to what the context leaves)."""
        return self.request_check.blocks_needed(num_prompt_tokens, max_tokens)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """The output limit this request gets; RequestError if it can never be served."""
        return self.request_check.check_fits(num_prompt_tokens, max_tokens)

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, *,
                    do_remote_decode: bool = False) -> int:
        """Queue a request; returns its id. RequestError naming the field if it can never be served (nothing of
        it stays in the engine then). Safe to call from another thread: it waits for a step in progress.
        do_remote_decode (a prefill engine's request): pin its blocks for a decode engine when it finishes."""
        if params is None:
            params = SamplingParams()
        elif not isinstance(params, SamplingParams):
            raise RequestError(f"params: expected SamplingParams, got {type(params).__name__}")
        params.validate()
        ids = self.encode_prompt(prompt)
        max_tokens = self.check_fits(len(ids), params.max_tokens)
        return self._queue(ids, params, max_tokens, do_remote_decode=do_remote_decode)

    def add_remote_request(self, prompt_token_ids: list[int], first_token: int, params: SamplingParams,
                           kv_transfer_params: KVTransferParams) -> int:
        """A decode engine's request whose prompt another engine ran: its K/V waits there (kv_transfer_params),
        its first token is known; it continues from that token once the K/V has landed here."""
        params.validate()
        ids = self.encode_prompt(list(prompt_token_ids))
        max_tokens = self.check_fits(len(ids), params.max_tokens)
        return self._queue(ids, params, max_tokens, first_token=first_token, kv_transfer_params=kv_transfer_params)

    def _queue(self, ids: list[int], params: SamplingParams, max_tokens: int, first_token: int | None = None, *,
               do_remote_decode: bool = False, kv_transfer_params: KVTransferParams | None = None) -> int:
        generator = self.generator if params.seed is None else torch.Generator().manual_seed(params.seed)
        with self._lock:
            rid = self.next_request_id
            self.next_request_id += 1
            req = Request(rid, ids, params, max_tokens, self.bus.clock(), generator=generator,
                          do_remote_decode=do_remote_decode, kv_transfer_params=kv_transfer_params)
            if first_token is not None:
                req.token_ids.append(first_token)
            self.requests[rid] = req
            self.scheduler.add(req)
            if self.bus.active:
                self.emit(RequestEvent(req.arrival_ts, self.step_id, rid, ARRIVED, len(ids), req.num_output_tokens,
                                       0, max_tokens))
        return rid

    def release_kv(self, transfer_id: str) -> None:
        """A prefill engine: free a transfer's pinned blocks (the decode side's acknowledgement, or a give-up)."""
        with self._lock:
            if self.connector is not None:
                self.connector.release_kv(transfer_id)

    def read_kv(self, transfer_id: str, block_ids: tuple[int, ...]) -> tuple[torch.Tensor, int, int]:
        """A prefill engine: the K/V of a transfer's pinned blocks (KVConnector.read_kv). Safe beside a step in
        another thread (the connector's pin lock, not the engine's lock): a read need not wait for a prefill."""
        assert self.connector is not None, "read_kv on an engine that is not a kv_producer"
        assert self.kv_cache is not None, "read_kv on a simulated device (its links move no K/V)"
        return self.connector.read_kv(self.kv_cache, transfer_id, block_ids)

    def expire_transfers(self) -> None:
        """A prefill engine: free the pins whose transfer timed out (done at every step; this for an idle one)."""
        with self._lock:
            if self.connector is not None:
                self.connector.expire()

    def has_pinned(self) -> bool:
        """A prefill engine still holds blocks for a transfer (a decode side has yet to read them)."""
        return self.connector is not None and bool(self.connector.pinned)

    def abort(self, request_id: int) -> bool:
        """End a request now (reason "abort"), freeing its blocks; False if it is unknown or already finished."""
        with self._lock:
            req = self.requests.get(request_id)
            aborted = req is not None and self.scheduler.abort(req)
            if aborted and self.bus.active:  # between steps: the pool's new state, not the last step's
                self.bus.emit(self.probe.kv_snapshot(self.step_id))
            return aborted

    def forget(self, request_id: int) -> None:
        """Drop a finished request's record (a server keeps no history); unknown or unfinished ids are kept."""
        with self._lock:
            req = self.requests.get(request_id)
            if req is not None and req.finish_reason:
                del self.requests[request_id]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def buses(self) -> dict[str, EventBus]:
        """Each engine's bus by engine id: this engine's own."""
        return {self.engine_id: self.bus}

    def close(self) -> None:
        """Nothing to stop: the engine lives and dies with this process."""

    def failure_report(self) -> None:
        """None: an engine on its own loses no request to another engine or a transfer (a request that failed
        here says so in its output, finish_reason "error")."""
        return None

    def queue_depths(self) -> tuple[int, int]:
        """(waiting, running) requests now (a decode engine's requests waiting for their K/V count as waiting)."""
        s = self.scheduler
        return len(s.waiting) + len(s.loading), len(s.running)

    def output(self, rid: int) -> RequestOutput:
        r = self.requests[rid]
        return RequestOutput(rid, r.prompt_token_ids, r.output_token_ids, output_text(r, self.tokenizer),
                             r.finish_reason, r.num_cached_tokens, r.num_preemptions, r.kv_transfer_params,
                             r.finish_detail)

    # --- one step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; returns the requests that finished in it."""
        with self._lock:
            probe = self.probe.begin_step(self.step_id)
            with probe.phase(Phase.SCHEDULE):
                out = self.scheduler.schedule(self.step_id)
            failed = self._load_kv(out, probe) if self.connector is not None else []
            if out.drafting:
                self._draft(out, probe)
            sampled: list[Request] = []
            if out.scheduled:
                with probe.phase(Phase.PREPARE, out.num_tokens):
                    batch = self.runner.prepare(out)
                with probe.phase(Phase.FORWARD, out.num_tokens):
                    logits = self.runner.forward(batch)
                sampled = batch.sampled
                with probe.phase(Phase.SAMPLE, len(sampled)):
                    tokens = self.runner.sample(batch, logits)
                    finished = self.scheduler.update(out, sampled, tokens)
            else:
                finished = self.scheduler.abort_unservable()
            probe.end_step(out, sampled)
            self.step_id += 1
            return [self.output(r.request_id) for r in failed + finished]

    def _load_kv(self, out: SchedulerOutput, probe: StepProbe | NullProbe) -> list[Request]:
        """A decode engine: land the K/V of the transfers under way (waiting for the earliest when there is
        nothing else to do); the requests whose transfer failed."""
        connector = self.connector
        assert connector is not None
        if not connector.pending:
            return []
        with probe.phase(Phase.KV_LOAD, len(connector.pending)):
            if not out.scheduled:
                connector.wait_for_any()
            connector.start_load_kv(self.kv_cache)
            return self.scheduler.settle_loads()

    def _draft(self, out: SchedulerOutput, probe: StepProbe | NullProbe) -> None:
        """Speculative decoding: the drafter proposes the drafting requests' tokens; unused slots are trimmed."""
        assert self.drafter is not None
        with probe.phase(Phase.DRAFT, len(out.drafting)):
            self.drafter.propose(out.drafting)
            out.trim_drafts()

    # --- engine truth for cross-checks --------------------------------------------------
    def block_tables(self) -> dict[int, list[int]]:
        return {r.request_id: list(r.block_table) for r in self.requests.values() if r.block_table}
