"""The engine: owns the requests, runs scheduler steps, announces each run.

One step = schedule -> prepare -> forward -> sample and update (LLMEngine.step). The step's
instruments (phase times, live ranges, per-op timing, the step's events) sit beside it in a
StepProbe (kvscope.engine.step_probe); with a subscriber on the bus a step emits StepBegin,
request and block events, one KernelEvent per operator, a KVSnapshot and StepEnd.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kvscope.engine.attention import backend_refusal, make_attention_backend, resolve_backend_name
from kvscope.engine.block_manager import BlockManager
from kvscope.engine.drafter import Drafter, make_drafter
from kvscope.engine.errors import RecipeError, RequestError
from kvscope.engine.kv_cache import KVCache, available_memory
from kvscope.engine.loader import load_model, load_shape
from kvscope.engine.math_utils import cdiv
from kvscope.engine.model_config import ModelConfig
from kvscope.engine.model_runner import ModelRunner
from kvscope.engine.op_timer import RangeHook
from kvscope.engine.recipe import Recipe
from kvscope.engine.request import Request, RequestOutput
from kvscope.engine.sampling import SamplingParams
from kvscope.engine.scheduler import Scheduler, make_scheduler
from kvscope.engine.step_probe import StepProbe
from kvscope.engine.stop_check import output_text
from kvscope.engine.tokenizer import Tokenizer
from kvscope.inspector.events import ARRIVED, EventBus, Phase, RequestEvent, RunInfo

if TYPE_CHECKING:
    from kvscope.engine.sim_setup import Simulation

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Prompt = str | Sequence[int] | Sequence[dict[str, str]]


@dataclass(slots=True)
class LoadedModel:
    """A model with its config and tokenizer, loaded once and reused across engine resets."""

    model: torch.nn.Module | None  # None on a simulated device
    config: ModelConfig
    tokenizer: Tokenizer
    dtype: torch.dtype
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def load_for_recipe(recipe: Recipe) -> LoadedModel:
    dtype = _DTYPES[recipe.dtype]
    if recipe.device == "sim":  # a simulated device: the shape and the tokenizer, no weights
        config, tokenizer = load_shape(recipe.model.as_dict())
        return LoadedModel(None, config, tokenizer, dtype, torch.device("cpu"))
    device = resolve_device(recipe.device)
    model, config, tokenizer = load_model(recipe.model.as_dict(), dtype, device)
    return LoadedModel(model, config, tokenizer, dtype, device)


MEMORY_FRACTION = 0.9  # of the device's free memory a KV pool may take


class LLMEngine:
    """Step-level API: add_request, step, has_unfinished (plus reset for a fresh run on the same model)."""

    def __init__(self, recipe: Recipe, loaded: LoadedModel | None = None, bus: EventBus | None = None,
                 range_hook: RangeHook | None = None, kernel_events: bool = True) -> None:
        self.recipe = recipe
        self.loaded = loaded or load_for_recipe(recipe)
        self.bus = bus or EventBus()
        cfg = self.loaded.config
        self.config = cfg
        self.tokenizer = self.loaded.tokenizer
        self.device = self.loaded.device
        self.max_model_len = min(recipe.scheduler.max_model_len, cfg.max_position_embeddings)
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
        self.backend = make_attention_backend(self.backend_name, self.device)
        self.runner = ModelRunner(self.loaded.model, self.kv_cache, self.backend, self.device)
        self.drafter: Drafter | None = make_drafter(recipe.speculative, self)
        self.probe = StepProbe(self, range_hook, kernel_events)
        self.generator = torch.Generator().manual_seed(recipe.sampling.seed or 0)
        self._lock = threading.RLock()  # add_request / abort from other threads wait for the step in progress
        self.reset()

    # --- set-up -----------------------------------------------------------------------
    def _set_up_simulation(self, range_hook: RangeHook | None, kernel_events: bool) -> None:
        """The rest of __init__ on a simulated device: no weights, no KV tensors; a SimRunner, the virtual
        clock on the bus, the pool as `kvscope kv` sizes it (unless the recipe gives one)."""
        from kvscope.engine.sim_probe import SimStepProbe
        from kvscope.engine.sim_setup import build_simulation

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
        self.scheduler: Scheduler = make_scheduler(self.block_manager, self.bus, self.recipe.scheduler,
                                                   self.max_model_len, self.tokenizer, self.recipe.speculative)
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
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, (list, tuple)):
            raise RequestError(f"prompt: expected text, a list of token ids or a list of chat messages, "
                               f"got {type(prompt).__name__}")
        if prompt and all(isinstance(m, dict) for m in prompt):
            text = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)
            return self.tokenizer.encode(text, add_bos=False)
        vocab = self.config.vocab_size
        for i, token in enumerate(prompt):
            if not isinstance(token, int) or isinstance(token, bool):
                raise RequestError(f"prompt[{i}]: token id {token!r} is not an integer")
            if not 0 <= token < vocab:
                raise RequestError(f"prompt[{i}]: token id {token} outside the vocabulary (0..{vocab - 1})")
        return list(prompt)

    def blocks_needed(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """KV blocks a request holds at its longest (its output cut to what the context leaves)."""
        out = min(max_tokens, max(self.max_model_len - num_prompt_tokens, 0))
        return cdiv(num_prompt_tokens + out, self.block_size)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """The output limit this request gets; RequestError if it can never be served."""
        if num_prompt_tokens == 0:
            raise RequestError("empty prompt")
        if num_prompt_tokens >= self.max_model_len:
            raise RequestError(f"prompt has {num_prompt_tokens} tokens, longer than the context "
                               f"(max_model_len {self.max_model_len} leaves no room to generate)")
        s = self.recipe.scheduler
        if s.policy == "continuous" and not s.chunked_prefill and num_prompt_tokens > s.max_num_batched_tokens:
            raise RequestError(f"prompt has {num_prompt_tokens} tokens, more than a step's token budget "
                               f"(max_num_batched_tokens {s.max_num_batched_tokens}) with chunked prefill off: "
                               f"it could never be scheduled")
        max_tokens = min(max_tokens, self.max_model_len - num_prompt_tokens)
        need = self.blocks_needed(num_prompt_tokens, max_tokens)
        if need > self.num_blocks:
            raise RequestError(f"needs {need} KV blocks ({num_prompt_tokens} prompt + {max_tokens} output "
                               f"tokens at block size {self.block_size}) but the pool has {self.num_blocks}")
        return max_tokens

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None) -> int:
        """Queue a request; returns its id. RequestError naming the field if it can never be served (nothing of
        it stays in the engine then). Safe to call from another thread: it waits for a step in progress."""
        if params is None:
            params = SamplingParams()
        elif not isinstance(params, SamplingParams):
            raise RequestError(f"params: expected SamplingParams, got {type(params).__name__}")
        params.validate()
        ids = self.encode_prompt(prompt)
        max_tokens = self.check_fits(len(ids), params.max_tokens)
        generator = self.generator if params.seed is None else torch.Generator().manual_seed(params.seed)
        with self._lock:
            rid = self.next_request_id
            self.next_request_id += 1
            req = Request(rid, ids, params, max_tokens, self.bus.clock(), generator=generator)
            self.requests[rid] = req
            self.scheduler.add(req)
            if self.bus.active:
                self.emit(RequestEvent(req.arrival_ts, self.step_id, rid, ARRIVED, len(ids), 0, 0, max_tokens))
        return rid

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

    def output(self, rid: int) -> RequestOutput:
        r = self.requests[rid]
        return RequestOutput(rid, r.prompt_token_ids, r.output_token_ids, output_text(r, self.tokenizer),
                             r.finish_reason, r.num_cached_tokens, r.num_preemptions)

    # --- one step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; returns the requests that finished in it."""
        with self._lock:
            probe = self.probe.begin_step(self.step_id)
            with probe.phase(Phase.SCHEDULE):
                out = self.scheduler.schedule(self.step_id)
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
            return [self.output(r.request_id) for r in finished]

    # --- engine truth for cross-checks --------------------------------------------------
    def block_tables(self) -> dict[int, list[int]]:
        return {r.request_id: list(r.block_table) for r in self.requests.values() if r.block_table}
