"""The engine: add requests, run scheduler steps, emit events.

One step = schedule -> prepare -> forward -> sample (and update). Each phase is
timed; with a subscriber on the bus the step emits StepBegin, request and
block events, one KernelEvent per operator, a KVSnapshot and StepEnd.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from kvscope.engine.attention import make_attention_backend, resolve_backend_name
from kvscope.engine.block_manager import BlockManager
from kvscope.engine.errors import RecipeError, RequestError
from kvscope.engine.kernel_events import KernelEventBuilder
from kvscope.engine.kv_cache import KVCache
from kvscope.engine.loader import load_model
from kvscope.engine.model_config import ModelConfig
from kvscope.engine.model_runner import ModelRunner
from kvscope.engine.op_timer import OpTimer, RangeHook
from kvscope.engine.recipe import Recipe
from kvscope.engine.request import Request, RequestOutput, RequestStatus
from kvscope.engine.sampling import SamplingParams, sample
from kvscope.engine.scheduler import Scheduler, StaticScheduler
from kvscope.engine.tokenizer import Tokenizer
from kvscope.inspector.events import (
    ARRIVED, FINISHED, FIRST_TOKEN, EventBus, KVSnapshot, RequestEvent, RunInfo, StepBegin, StepEnd, now_ns,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Prompt = str | Sequence[int] | Sequence[dict[str, str]]


@dataclass(slots=True)
class LoadedModel:
    """A model with its config and tokenizer, loaded once and reused across engine resets."""

    model: torch.nn.Module
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
    device = resolve_device(recipe.device)
    dtype = _DTYPES[recipe.dtype]
    model, config, tokenizer = load_model(recipe.model.as_dict(), dtype, device)
    return LoadedModel(model, config, tokenizer, dtype, device)


class LLMEngine:
    """Step-level API: add_request, step, has_unfinished (plus reset for a fresh run on the same model)."""

    def __init__(self, recipe: Recipe, loaded: LoadedModel | None = None, bus: EventBus | None = None,
                 range_hook: RangeHook | None = None, kernel_events: bool = True) -> None:
        self.recipe = recipe
        self.loaded = loaded or load_for_recipe(recipe)
        self.bus = bus or EventBus()
        self.range_hook = range_hook
        self.kernel_events = kernel_events
        cfg = self.loaded.config
        self.config = cfg
        self.tokenizer = self.loaded.tokenizer
        self.device = self.loaded.device
        self.max_model_len = min(recipe.scheduler.max_model_len, cfg.max_position_embeddings)
        self.block_size = recipe.cache.block_size
        self.bytes_per_block = KVCache.bytes_per_block(cfg.num_layers, self.block_size, cfg.num_kv_heads,
                                                       cfg.head_dim, self.loaded.dtype)
        self.num_blocks = self._pool_blocks()
        self.kv_cache = KVCache(cfg.num_layers, self.num_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim,
                                self.loaded.dtype, self.device)
        self.backend_name = resolve_backend_name(recipe.attention_backend, self.device)
        self.backend = make_attention_backend(self.backend_name, self.device)
        self.runner = ModelRunner(self.loaded.model, self.kv_cache, self.backend, self.device,
                                  scale=cfg.head_dim ** -0.5)
        self.kernel_builder = KernelEventBuilder(cfg, self.loaded.dtype, self.backend_name,
                                                 fused_norm_rope=self.backend.fused_ops is not None)
        self.generator = torch.Generator().manual_seed(recipe.sampling.seed or 0)
        self.reset()

    # --- set-up -----------------------------------------------------------------------
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
        s = self.recipe.scheduler
        return -(-s.max_num_seqs * min(self.max_model_len, 512) // self.block_size)

    def reset(self) -> None:
        """Forget every request and block; the model and the pools stay."""
        s = self.recipe.scheduler
        self.block_manager = BlockManager(self.num_blocks, self.block_size, self.recipe.cache.prefix_caching,
                                          self.bus)
        if s.policy == "static":
            self.scheduler: Scheduler = StaticScheduler(self.block_manager, self.bus, s.max_num_seqs,
                                                        s.max_num_batched_tokens, s.chunked_prefill,
                                                        self.max_model_len)
        else:
            self.scheduler = Scheduler(self.block_manager, self.bus, s.max_num_seqs, s.max_num_batched_tokens,
                                       s.chunked_prefill)
        self.requests: dict[int, Request] = {}
        self.next_request_id = 0
        self.step_id = 0
        self.info_sent = False

    def _announce(self) -> None:
        """RunInfo goes out once per run, before the run's first other event."""
        self.bus.emit(self.run_info())
        self.info_sent = True

    def run_info(self) -> RunInfo:
        cfg, s = self.config, self.recipe.scheduler
        budget = s.max_num_batched_tokens
        return RunInfo(now_ns(), self.step_id, cfg.name, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
                       cfg.head_dim, cfg.hidden_size, str(self.loaded.dtype).removeprefix("torch."),
                       str(self.device), self.backend_name, s.policy, self.num_blocks, self.block_size,
                       self.bytes_per_block, budget, s.max_num_seqs, self.max_model_len,
                       self.recipe.cache.prefix_caching)

    # --- requests ---------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        items = list(prompt)
        if items and isinstance(items[0], dict):
            return self.tokenizer.encode(self.tokenizer.apply_chat_template(items, add_generation_prompt=True),
                                         add_bos=False)
        return [int(t) for t in items]

    def blocks_needed(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """KV blocks a request holds at its longest (its output cut to what the context leaves)."""
        out = min(max_tokens, max(self.max_model_len - num_prompt_tokens, 0))
        return -(-(num_prompt_tokens + out) // self.block_size)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """The output limit this request gets; RequestError if it can never be served."""
        if num_prompt_tokens == 0:
            raise RequestError("empty prompt")
        if num_prompt_tokens >= self.max_model_len:
            raise RequestError(f"prompt has {num_prompt_tokens} tokens, longer than the context "
                               f"(max_model_len {self.max_model_len} leaves no room to generate)")
        max_tokens = min(max_tokens, self.max_model_len - num_prompt_tokens)
        need = self.blocks_needed(num_prompt_tokens, max_tokens)
        if need > self.num_blocks:
            raise RequestError(f"needs {need} KV blocks ({num_prompt_tokens} prompt + {max_tokens} output "
                               f"tokens at block size {self.block_size}) but the pool has {self.num_blocks}")
        return max_tokens

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None) -> int:
        """Queue a request; returns its id. RequestError if it can never be served."""
        params = params or SamplingParams()
        ids = self.encode_prompt(prompt)
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise RequestError(f"token id {bad[0]} outside the vocabulary (0..{self.config.vocab_size - 1})")
        max_tokens = self.check_fits(len(ids), params.max_tokens)
        rid = self.next_request_id
        self.next_request_id += 1
        req = Request(rid, ids, params, max_tokens, now_ns())
        if params.seed is not None:
            req.generator = torch.Generator().manual_seed(params.seed)
        else:
            req.generator = self.generator
        self.requests[rid] = req
        self.scheduler.add(req)
        if self.bus.active:
            if not self.info_sent:
                self._announce()
            self.bus.emit(RequestEvent(req.arrival_ts, self.step_id, rid, ARRIVED, len(ids), 0, 0, max_tokens))
        return rid

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def output(self, rid: int) -> RequestOutput:
        r = self.requests[rid]
        text = r.text if r.params.stop else self.tokenizer.decode(r.output_token_ids)
        return RequestOutput(rid, r.prompt_token_ids, r.output_token_ids, text, r.finish_reason,
                             r.num_cached_tokens, r.num_preemptions)

    # --- one step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; returns the requests that finished in it."""
        bus, hook = self.bus, self.range_hook
        active = bus.active
        if active and not self.info_sent:
            self._announce()
        step = self.step_id
        self.block_manager.step = step
        self.scheduler.step = step
        t0 = now_ns()
        if active:
            bus.emit(StepBegin(t0, step))
        if hook is not None:
            hook.push("step", "step", step)
            hook.push("schedule", "phase")
        sched = self.scheduler.schedule()
        t1 = now_ns()
        if hook is not None:
            hook.pop()
        finished: list[Request] = []
        sampled_pairs: tuple[tuple[int, int], ...] = ()
        phases: list[tuple[str, int, int]] = [("schedule", t0, t1)]
        if sched.scheduled:
            if hook is not None:
                hook.push("prepare", "phase", sched.num_tokens)
            batch = self.runner.prepare(sched.scheduled, sched.num_padding_tokens)
            t2 = now_ns()
            if hook is not None:
                hook.pop()
                hook.push("forward", "phase", sched.num_tokens)
            timer = OpTimer(self.device, hook) if (active and self.kernel_events) or hook is not None else None
            if timer is not None:
                timer.start_step()
            logits = self.runner.forward(batch, timer)
            t3 = now_ns()
            if hook is not None:
                hook.pop()
                hook.push("sample", "phase", len(batch.sampled))
            if logits is not None:
                if timer is not None:
                    timer.begin("sample", -1)
                reqs = batch.sampled
                new_tokens = sample(logits, [r.params for r in reqs], [r.generator for r in reqs])
                if timer is not None:
                    timer.end()
            else:
                new_tokens = []
            for s in sched.scheduled:
                s.request.num_computed_tokens += s.num_tokens
                self.block_manager.cache_full_blocks(s.request)
            for req, tok in zip(batch.sampled, new_tokens):
                if self._append_token(req, tok):
                    finished.append(req)
            for req in finished:
                self.scheduler.finish(req)
            t4 = now_ns()
            if hook is not None:
                hook.pop()
            phases += [("prepare", t1, t2), ("forward", t2, t3), ("sample", t3, t4)]
            sampled_pairs = tuple((r.request_id, 1) for r in batch.sampled)
            if active and timer is not None:
                for ev in self.kernel_builder.events(step, timer.resolve(), sched.scheduled, len(batch.sampled),
                                                     sched.num_padding_tokens):
                    bus.emit(ev)
        elif self.scheduler.has_unfinished() and not self.scheduler.running:
            finished.extend(self._abort_unservable())
        if hook is not None:
            hook.pop()
        if active:
            for req in finished:
                bus.emit(RequestEvent(req.finished_ts, step, req.request_id, FINISHED, req.num_prompt_tokens,
                                      req.num_output_tokens, req.num_computed_tokens, req.max_tokens,
                                      req.finish_reason))
            bus.emit(self.kv_snapshot(step))
            prefill = tuple((s.request.request_id, s.num_tokens) for s in sched.scheduled if s.is_prefill_step)
            decode = tuple(s.request.request_id for s in sched.scheduled if not s.is_prefill_step)
            bus.emit(StepEnd(now_ns(), step, t0, sched.num_tokens, self.scheduler.token_budget, prefill, decode,
                             sampled_pairs, tuple(phases), len(self.scheduler.running), len(self.scheduler.waiting),
                             sum(1 for r in self.scheduler.waiting if r.status is RequestStatus.PREEMPTED),
                             sched.num_padding_tokens))
        self.step_id += 1
        return [self.output(r.request_id) for r in finished]

    def _append_token(self, req: Request, token: int) -> bool:
        """Append a sampled token; True if the request is now finished."""
        req.token_ids.append(token)
        if req.num_output_tokens == 1:
            req.first_token_ts = now_ns()
            if self.bus.active:
                self.bus.emit(RequestEvent(req.first_token_ts, self.step_id, req.request_id, FIRST_TOKEN,
                                           req.num_prompt_tokens, 1, req.num_computed_tokens, req.max_tokens))
        p = req.params
        reason = ""
        if not p.ignore_eos and token in self.tokenizer.eos_token_ids:
            reason = "stop"
        elif token in p.stop_token_ids:
            reason = "stop"
        elif p.stop and self._hit_stop_string(req):
            reason = "stop"
        elif req.num_output_tokens >= req.max_tokens:
            reason = "length"
        if not reason:
            return False
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.finished_ts = now_ns()
        return True

    def _hit_stop_string(self, req: Request) -> bool:
        text = self.tokenizer.decode(req.output_token_ids)
        cut = min((i for i in (text.find(s) for s in req.params.stop) if i >= 0), default=-1)
        req.text = text if cut < 0 else text[:cut]
        return cut >= 0

    def _abort_unservable(self) -> list[Request]:
        """Nothing runs and the queue head cannot be admitted: end it rather than spin."""
        req = self.scheduler.waiting.popleft()
        req.status = RequestStatus.FINISHED
        req.finish_reason = "abort"
        req.finished_ts = now_ns()
        return [req]

    def kv_snapshot(self, step: int) -> KVSnapshot:
        bm, bs = self.block_manager, self.block_size
        live = self.scheduler.live_requests()
        stored = sum(min(r.num_computed_tokens, len(r.block_table) * bs) for r in live) - bm.num_shared_extra * bs
        used = bm.num_used_blocks
        contiguous = sum(self.max_model_len - min(r.num_computed_tokens, self.max_model_len) for r in live)
        return KVSnapshot(now_ns(), step, self.num_blocks, bs, used, bm.num_cached_free,
                          bm.num_free_blocks - bm.num_cached_free, stored, used * bs - stored, contiguous)

    # --- engine truth for cross-checks --------------------------------------------------
    def block_tables(self) -> dict[int, list[int]]:
        return {r.request_id: list(r.block_table) for r in self.requests.values() if r.block_table}
