"""Drafting with a separate draft model: a smaller Llama-family model with the target's vocabulary.

The draft model has its own KV pool and block tables (a BlockManager of its own, no prefix cache): each
target request has a shadow request here whose table maps the draft model's K/V of the tokens it has seen.
On each step the drafter first catches up (the tokens the target committed since, after the longest prefix
it had already seen: a rejected draft's K/V is recomputed, never trusted), then proposes k tokens one pass
at a time. Shadows of finished requests are freed at the next proposal. A request whose K/V no longer fits
the draft pool gets no drafts this step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvscope.config.model_config import ModelConfig
from kvscope.engine.core.block_manager import BlockManager
from kvscope.engine.core.request import Request, RequestStatus
from kvscope.engine.model.loader import load_model
from kvscope.engine.worker.kv_cache import KVCache
from kvscope.engine.worker.model_runner import ModelRunner
from kvscope.engine.worker.sampler import target_probs
from kvscope.errors import RecipeError
from kvscope.events.bus import EventBus

if TYPE_CHECKING:
    from kvscope.config.recipe import SpeculativeSpec
    from kvscope.engine.core.scheduler import ScheduledRequest
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.engine.model.llama import LlamaModel


def _real_device(engine: LLMEngine) -> torch.device:
    """The engine's torch device: speculative decoding runs on a real device only (a recipe refuses it on
    `device: sim`)."""
    device = engine.device
    assert isinstance(device, torch.device), "a draft model needs a real device"
    return device


def check_draft_vocab(draft: ModelConfig, engine: LLMEngine) -> None:
    """RecipeError naming speculative.model when the draft model's vocabulary is not the target's."""
    target = engine.config.vocab_size
    if draft.vocab_size != target:
        raise RecipeError(f"{engine.recipe.source}: speculative.model: its vocabulary has {draft.vocab_size} "
                          f"tokens, the target's {target}: a draft model must share the target's vocabulary")


class DraftModelDrafter:
    method = "draft_model"

    def __init__(self, model: LlamaModel, cfg: ModelConfig, engine: LLMEngine) -> None:
        device, backend = _real_device(engine), engine.backend
        assert backend is not None  # a real device's engine has its attention backend
        self.kv_cache = KVCache(cfg.num_layers, engine.num_blocks, engine.block_size, cfg.num_kv_heads,
                                cfg.head_dim, engine.loaded.dtype, device)
        self.runner = ModelRunner(model, self.kv_cache, backend, device)
        self.blocks = BlockManager(engine.num_blocks, engine.block_size, False, EventBus())
        self.shadows: dict[int, tuple[Request, Request]] = {}  # request id -> (target request, its shadow)

    @classmethod
    def for_engine(cls, engine: LLMEngine, spec: SpeculativeSpec) -> DraftModelDrafter:
        """Load the recipe's draft model; RecipeError naming speculative.model if it cannot draft for `engine`."""
        where = engine.recipe.source
        assert spec.model is not None
        try:
            model, config, _ = load_model(spec.model, engine.loaded.dtype, _real_device(engine))
        except RecipeError as exc:
            raise RecipeError(f"{where}: speculative.{exc}") from None
        check_draft_vocab(config, engine)
        return cls(model, config, engine)

    def _shadow(self, req: Request) -> Request:
        pair = self.shadows.get(req.request_id)
        if pair is None or pair[0] is not req:
            if pair is not None:
                self.blocks.free(pair[1])
            pair = (req, Request(req.request_id, [], req.params, req.max_tokens, 0))
            self.shadows[req.request_id] = pair
        return pair[1]

    def _forget_finished(self) -> None:
        for rid, (req, shadow) in list(self.shadows.items()):
            if req.status is RequestStatus.FINISHED:
                self.blocks.free(shadow)
                del self.shadows[rid]

    @torch.inference_mode()
    def propose(self, drafting: list[ScheduledRequest]) -> None:
        self._forget_finished()
        jobs: list[tuple[ScheduledRequest, Request, int]] = []  # (scheduled, shadow, first position to compute)
        for s in drafting:
            req, shadow = s.request, self._shadow(s.request)
            seen = shadow.token_ids
            valid = 0
            limit = min(len(seen), req.num_tokens - 1)  # the newest token is always recomputed: its logits draft
            while valid < limit and seen[valid] == req.token_ids[valid]:
                valid += 1
            shadow.num_computed_tokens = valid
            if self.blocks.allocate_slots(shadow, req.num_tokens - valid + s.num_draft_slots - 1) is None:
                s.request.spec_token_ids = []
                continue
            shadow.token_ids = list(req.token_ids)
            jobs.append((s, shadow, valid))
        if not jobs:
            return
        drafts = self._first_drafts(jobs)
        for i in range(1, max(s.num_draft_slots for s, _, _ in jobs)):
            live = [j for j in jobs if j[0].num_draft_slots > i]
            self._next_drafts(live, drafts, i)
        for s, shadow, _ in jobs:
            tokens, rows = drafts[id(s)]
            s.request.spec_token_ids = tokens
            s.request.draft_probs = torch.stack(rows) if rows else None
            shadow.token_ids.extend(tokens[:-1])  # the last draft's K/V is never written
            shadow.num_computed_tokens = len(shadow.token_ids)

    def _first_drafts(self, jobs: list[tuple[ScheduledRequest, Request, int]]) -> dict[int, tuple[list, list]]:
        bs = self.blocks.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        qlens: list[int] = []
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        last_rows: list[int] = []
        for s, shadow, start in jobs:
            end = s.request.num_tokens
            ids.extend(s.request.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(shadow.block_table[p // bs] * bs + p % bs for p in range(start, end))
            qlens.append(end - start)
            seq_lens.append(end)
            tables.append(shadow.block_table)
            last_rows.append(len(ids) - 1)
        logits = self._logits(ids, positions, slots, qlens, seq_lens, tables, last_rows)
        drafts: dict[int, tuple[list, list]] = {id(s): ([], []) for s, _, _ in jobs}
        for row, (s, _, _) in enumerate(jobs):
            self._pick(s.request, logits[row], drafts[id(s)])
        return drafts

    def _next_drafts(self, live: list[tuple[ScheduledRequest, Request, int]], drafts: dict[int, tuple[list, list]],
                     i: int) -> None:
        bs = self.blocks.block_size
        ids, positions, slots, seq_lens, tables = [], [], [], [], []
        for s, shadow, _ in live:
            pos = s.request.num_tokens + i - 1
            ids.append(drafts[id(s)][0][-1])
            positions.append(pos)
            slots.append(shadow.block_table[pos // bs] * bs + pos % bs)
            seq_lens.append(pos + 1)
            tables.append(shadow.block_table)
        logits = self._logits(ids, positions, slots, [1] * len(live), seq_lens, tables, list(range(len(live))))
        for row, (s, _, _) in enumerate(live):
            self._pick(s.request, logits[row], drafts[id(s)])

    def _logits(self, ids: list[int], positions: list[int], slots: list[int], qlens: list[int], seq_lens: list[int],
                tables: list[list[int]], rows: list[int]) -> torch.Tensor:
        runner = self.runner
        runner.ensure_bound()
        ctx = runner.context(positions, slots, qlens, seq_lens, tables)
        hidden = runner.model(runner._tensor(ids, torch.int64), ctx)
        return runner.model.compute_logits(hidden[runner._tensor(rows, torch.int64)])

    @staticmethod
    def _pick(req: Request, logits: torch.Tensor, out: tuple[list, list]) -> None:
        if req.params.greedy:
            out[0].append(int(logits.argmax()))
            return
        p = target_probs(logits, req.params)
        out[0].append(int(torch.multinomial(p, 1, generator=req.generator)))
        out[1].append(p)
