"""Self-speculative drafting (LayerSkip-style): the target's own first L layers, its final norm and LM head.

For each drafting request, k one-token passes through the first L layers: the first from its newest token
(at the slot the step reserved for it), each next from the previous draft. The passes write the first L
layers' K/V into the request's own reserved slots; the verifying forward pass then writes every layer's
K/V at the same slots (overwriting these with the same values for the first L layers), and rejected slots
are rolled back. Greedy requests draft the argmax; sampled ones sample the draft distribution under their
own parameters and keep it (draft_probs) for rejection sampling. No weights or KV of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvscope.engine.worker.model_runner import ModelRunner
from kvscope.engine.worker.sampler import target_probs

if TYPE_CHECKING:
    from kvscope.engine.core.scheduler import ScheduledRequest
    from kvscope.engine.llm_engine import LLMEngine


class LayerSkipDrafter:
    method = "layerskip"

    def __init__(self, engine: LLMEngine, num_layers: int) -> None:
        runner = engine.runner
        # speculative decoding runs on a real device only (a recipe refuses it on `device: sim`): a ModelRunner
        assert isinstance(runner, ModelRunner), "layerskip drafting needs the engine's ModelRunner"
        self.runner = runner
        self.num_layers = num_layers

    @torch.inference_mode()
    def propose(self, drafting: list[ScheduledRequest]) -> None:
        runner, model, bs = self.runner, self.runner.model, self.runner.block_size
        active = [s for s in drafting if s.num_draft_slots > 0]
        drafts: dict[int, list[int]] = {id(s): [] for s in active}
        probs: dict[int, list[torch.Tensor]] = {id(s): [] for s in active}
        i = 0
        while active:
            tokens, positions, slots, seq_lens, tables = [], [], [], [], []
            for s in active:
                req = s.request
                pos = req.num_computed_tokens + i
                tokens.append(drafts[id(s)][-1] if i else req.token_ids[-1])
                positions.append(pos)
                slots.append(req.block_table[pos // bs] * bs + pos % bs)
                seq_lens.append(pos + 1)
                tables.append(req.block_table)
            ctx = runner.context(positions, slots, [1] * len(active), seq_lens, tables)
            hidden = model(runner._tensor(tokens, torch.int64), ctx, self.num_layers)
            logits = model.compute_logits(hidden)
            for row, s in enumerate(active):
                params = s.request.params
                if params.greedy:
                    drafts[id(s)].append(int(logits[row].argmax()))
                else:
                    p = target_probs(logits[row], params)
                    drafts[id(s)].append(int(torch.multinomial(p, 1, generator=s.request.generator)))
                    probs[id(s)].append(p)
            i += 1
            active = [s for s in active if s.num_draft_slots > i]
        for s in drafting:
            s.request.spec_token_ids = drafts.get(id(s), [])
            rows = probs.get(id(s))
            s.request.draft_probs = torch.stack(rows) if rows else None
