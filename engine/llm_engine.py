"""The engine: owns the requests, runs scheduler steps, announces each run.

One step = schedule -> prepare -> forward -> sample and update (LLMEngine.step); an engine in a
disaggregated deployment (kv_role) also pins prompts' blocks for another engine or loads another engine's
K/V between schedule and prepare (kvscope.engine.core.kv_connector). The step's
instruments (phase times, live ranges, per-op timing, the step's events) sit beside it in a
StepProbe (kvscope.engine.probe.step_probe); with a subscriber on the bus a step emits StepBegin,
request and block events, one KernelEvent per operator, a KVSnapshot and StepEnd.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.block_manager import BlockManager
from kvscope.engine.core.kv_connector import KVConnector, KVPeer, KVTransferParams
from kvscope.engine.core.math_utils import cdiv
from kvscope.engine.core.request import Request, RequestOutput
from kvscope.engine.core.request_check import Prompt, RequestCheck, max_model_len
from kvscope.engine.core.scheduler import Scheduler, make_scheduler
from kvscope.engine.core.stop_check import output_text
from kvscope.engine.model.attention import backend_refusal, make_attention_backend, resolve_backend_name
from kvscope.engine.model.loader import LoadedModel, load_for_recipe
from kvscope.engine.probe.op_timer import RangeHook, strip_op_timers
from kvscope.engine.probe.step_probe import StepProbe
from kvscope.engine.spec.drafter import Drafter, make_drafter
from kvscope.engine.worker.cuda_graphs import DecodeGraphs
from kvscope.engine.worker.decode_program import CpuDecodePrograms
from kvscope.engine.worker.kv_cache import KVCache, available_memory
from kvscope.engine.worker.model_runner import ModelRunner
from kvscope.errors import RecipeError, RequestError
from kvscope.events.bus import EventBus
from kvscope.events.records import RequestEvent, RunInfo
from kvscope.events.vocabulary import ARRIVED, Phase

if TYPE_CHECKING:
    from kvscope.engine.sim.setup import Simulation

MEMORY_FRACTION = 0.9  # of the device's free memory a KV pool may take


class LLMEngine:
    """Step-level API: add_request, step, has_unfinished (plus reset for a fresh run on the same model)."""

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
        cfg = self.loaded.config
        self.config = cfg
        self.tokenizer = self.loaded.tokenizer
        self.device = self.loaded.device
        self.max_model_len = max_model_len(recipe, cfg)
        self.block_size = recipe.cache.block_size
        self.sim: Simulation | None = None
        if recipe.device == "sim":  # the forward pass by the cost model on a virtual clock (kvscope.engine.sim_*)
            self._set_up_simulation(range_hook, kernel_events)
            return
        self.bytes_per_block = KVCache.bytes_per_block(cfg.num_layers, self.block_size, cfg.num_kv_heads,
                                                       cfg.head_dim, self.loaded.dtype)
        self.num_blocks = self._pool_blocks()
        self._check_pool_fits_memory()
        self.kv_cache = KVCache(cfg.num_layers, self.num_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim,
                                self.loaded.dtype, self.device)
        self.backend_name = resolve_backend_name(recipe.attention_backend, self.device)
        refusal = backend_refusal(self.backend_name, self.device)
        if refusal is not None:
            raise RecipeError(f"{recipe.source}: attention_backend: {refusal}")
        self.backend = make_attention_backend(self.backend_name, self.device, self.loaded.dtype)
        self.runner = ModelRunner(self.loaded.model, self.kv_cache, self.backend, self.device)
        if recipe.cuda_graphs:
            self._capture_decode_graphs()
        elif CpuDecodePrograms.applies_to(self.loaded.model, self.loaded.dtype, self.device, self.backend):
            self.runner.graphs = CpuDecodePrograms(self.loaded.model, self.runner.kv_layers,
                                                   recipe.scheduler.max_num_seqs, self.max_model_len,
                                                   self.block_size)
        self.drafter: Drafter | None = make_drafter(recipe.speculative, self)
        self.probe = StepProbe(self, range_hook, kernel_events)
        self.generator = torch.Generator().manual_seed(recipe.sampling.seed or 0)
        self._lock = threading.RLock()  # add_request / abort from other threads wait for the step in progress
        self.reset()

    # --- set-up -----------------------------------------------------------------------
    def _capture_decode_graphs(self) -> None:
        """CUDA graphs of the decode step for the batch-size ladder (kvscope.engine.worker.cuda_graphs)."""
        if self.device.type != "cuda" or self.backend_name != "triton":
            raise RecipeError(f"{self.recipe.source}: cuda_graphs: needs a CUDA device and the triton attention "
                              f"backend; this run is on {self.device.type} with {self.backend_name}")
        strip_op_timers(self.loaded.model, self.runner)  # nothing of a timer may be captured into a graph
        self.runner.graphs = DecodeGraphs(self.loaded.model, self.device, self.recipe.scheduler.max_num_seqs,
                                          self.max_model_len, self.block_size)

    def _set_up_simulation(self, range_hook: RangeHook | None, kernel_events: bool) -> None:
        """The rest of __init__ on a simulated device: no weights, no KV tensors; a SimRunner, the virtual
        clock on the bus, the pool as `kvscope kv` sizes it (unless the recipe gives one)."""
        from kvscope.engine.sim.probe import SimStepProbe
        from kvscope.engine.sim.setup import build_simulation

        self.sim = sim = build_simulation(self.recipe, self.config, self.tokenizer)
        self.device = sim.label
        self.bytes_per_block = sim.bytes_per_block
        self.num_blocks = self._pool_blocks()
        self.kv_cache = None
        self.backend_name, self.backend = "cost-model", None
        self.runner = sim.runner
        self.bus.clock = sim.clock
        self.probe = SimStepProbe(self, range_hook, kernel_events)
        self.generator = torch.Generator().manual_seed(self.recipe.sampling.seed or 0)
        self._lock = threading.RLock()
        self.reset()

    def _pool_blocks(self) -> int:
        c = self.recipe.cache
        if c.num_blocks is not None:
            return c.num_blocks
        if c.memory_gib is not None:
            n = int(c.memory_gib * 2**30) // self.bytes_per_block
            if n < 1:
                raise RecipeError(f"{self.recipe.source}: cache.memory_gib: {c.memory_gib} GiB holds no block "
                                  f"of {self.bytes_per_block} bytes")
            return n
        if self.sim is not None:
            return self.sim.num_blocks
        s = self.recipe.scheduler
        return cdiv(s.max_num_seqs * min(self.max_model_len, 512), self.block_size)

    def _check_pool_fits_memory(self) -> None:
        """Refuse, before allocating it, a pool larger than MEMORY_FRACTION of the device's free memory."""
        available = available_memory(self.device)
        pool = self.num_blocks * self.bytes_per_block
        if available is not None and pool > MEMORY_FRACTION * available:
            raise RecipeError(f"{self.recipe.source}: cache: a pool of {self.num_blocks} blocks of "
                              f"{self.bytes_per_block} bytes is {pool / 2**30:.1f} GiB, more than "
                              f"{MEMORY_FRACTION:.0%} of the {available / 2**30:.1f} GiB free on {self.device}")

    def reset(self) -> None:
        """Forget every request and block; the model and the pools stay."""
        self.block_manager = BlockManager(self.num_blocks, self.block_size, self.recipe.cache.prefix_caching,
                                          self.bus)
        self.connector: KVConnector | None = None
        if self.kv_role is not None:
            self.connector = KVConnector(self.engine_id, self.kv_role, self.bus, self.block_manager,
                                         round(self.recipe.deployment.transfer_timeout_s * 1e9), self.kv_peers,
                                         bytes_per_block=self.bytes_per_block, step=lambda: self.step_id)
        self.scheduler: Scheduler = make_scheduler(self.block_manager, self.bus, self.recipe.scheduler,
                                                   self.max_model_len, self.tokenizer, self.recipe.speculative,
                                                   self.connector)
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
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt given as text, token ids or chat messages; RequestError naming what is wrong."""
        return self.request_check.encode_prompt(prompt)

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

    def _queue(self, ids: list[int], params: SamplingParams, max_tokens: int, first_token: int | None = None,
               **transfer: object) -> int:
        generator = self.generator if params.seed is None else torch.Generator().manual_seed(params.seed)
        with self._lock:
            rid = self.next_request_id
            self.next_request_id += 1
            req = Request(rid, ids, params, max_tokens, self.bus.clock(), generator=generator, **transfer)
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
            return req is not None and self.scheduler.abort(req)

    def forget(self, request_id: int) -> None:
        """Drop a finished request's record (a server keeps no history); unknown or unfinished ids are kept."""
        with self._lock:
            req = self.requests.get(request_id)
            if req is not None and req.finish_reason:
                del self.requests[request_id]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

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
            failed: list[Request] = []
            if self.connector is not None and self.connector.pending:
                with probe.phase(Phase.KV_LOAD, len(self.connector.pending)):
                    if not out.scheduled:  # nothing else to do: wait for the earliest K/V
                        self.connector.wait_for_any()
                    self.connector.start_load_kv(self.kv_cache)
                    failed = self.scheduler.settle_loads()
            sampled: list[Request] = []
            if out.drafting:
                with probe.phase(Phase.DRAFT, len(out.drafting)):
                    self.drafter.propose(out.drafting)
                    out.trim_drafts()
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

    # --- engine truth for cross-checks --------------------------------------------------
    def block_tables(self) -> dict[int, list[int]]:
        return {r.request_id: list(r.block_table) for r in self.requests.values() if r.block_table}
