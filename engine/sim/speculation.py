"""Speculative decoding on a simulated device: the drafter's cost and the acceptance model.

SimDrafter stands in for a recipe's drafter (kvscope.engine.spec.drafter.make_drafter picks it on `device:
sim`). It proposes filler drafts in every reserved slot and advances the virtual clock by what drafting them
costs on the modelled device, each pass priced by the step cost model (kvscope.costmodel.sim_cost) of the
draft's shape: nothing for ngram (a host-side lookup), k one-token passes of the target's first L layers for
layerskip, and for draft_model a catch-up pass over the tokens its own K/V lacks (the whole prefix the first
time; later the bonus token, and the last draft when all were accepted, as the real drafter recomputes them)
then k - 1 one-token passes. The draft model's weights and K/V are not taken from the target's pool.

accepted_drafts is the acceptance model the simulated runner verifies with: each of k drafts is accepted with
probability `rate`, independently, until the first rejection; one uniform draw from the request's generator
(the engine's seeded one) decides how many, so a run repeats exactly. Its rate is the recipe's
speculative.acceptance_rate, or measured_acceptance of a real run's summary (speculative.acceptance_from).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.sim_cost import StepCostModel
from kvscope.engine.core.request import Request, RequestStatus
from kvscope.errors import RecipeError

if TYPE_CHECKING:
    from kvscope.engine.core.scheduler import ScheduledRequest
    from kvscope.engine.sim.setup import Simulation


def accepted_drafts(rate: float, k: int, generator: torch.Generator | None) -> int:
    """How many of k drafts a verification accepts: at least j with probability rate^j (j <= k)."""
    u = float(torch.rand((), generator=generator))
    n, p = 0, rate
    while n < k and u < p:
        n += 1
        p *= rate
    return n


def measured_acceptance(path: str, where: str) -> float:
    """spec_decode.per_token_acceptance of a `kvscope run --headless --json` summary at `path`; a RecipeError
    naming `where` and speculative.acceptance_from when the file is no such summary."""
    field = f"{where}: speculative.acceptance_from: {path}"
    try:
        with open(path, encoding="utf-8") as f:
            data: Any = json.load(f)
    except OSError as exc:
        raise RecipeError(f"{field}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{field}: not JSON ({exc})") from None
    spec = data.get("spec_decode") if isinstance(data, dict) else None
    rate = spec.get("per_token_acceptance") if isinstance(spec, dict) else None
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        raise RecipeError(f"{field}: expected a `kvscope run --headless --json` summary of a speculative run "
                          f"(spec_decode.per_token_acceptance between 0 and 1)")
    return float(rate)


class SimDrafter:
    """A drafter of method `method` on the simulated device `sim`; `shape` is what drafts (None: free)."""

    def __init__(self, method: str, sim: Simulation, shape: ModelConfig | None) -> None:
        self.method = method
        self.clock = sim.clock
        self.token_id = sim.runner.token_id
        target = sim.cost
        self.cost = None if shape is None else StepCostModel(shape, target.device, tp=target.tp,
                                                             dtype=target.dtype, profile=target.profile)
        self.catch_up = method == "draft_model"  # a separate model keeps K/V of its own to bring up to date
        self.seen: dict[int, tuple[Request, int]] = {}  # request id -> (request, tokens its draft K/V covers)

    def propose(self, drafting: list[ScheduledRequest]) -> None:
        token = self.token_id
        for s in drafting:
            s.request.spec_token_ids = [token] * s.num_draft_slots
            s.request.draft_probs = None
        if self.cost is not None and drafting:
            self.clock.advance(self.draft_time(drafting))

    def draft_time(self, drafting: list[ScheduledRequest]) -> float:
        """Seconds the draft's passes take for the step's drafting requests (each pass one batch)."""
        assert self.cost is not None
        for rid, (req, _) in list(self.seen.items()):
            if req.status is RequestStatus.FINISHED:
                del self.seen[rid]
        first_q: list[int] = []
        first_seq: list[int] = []
        for s in drafting:
            req = s.request
            n = req.num_tokens
            if self.catch_up:
                known = self.seen.get(req.request_id)
                valid = min(known[1], n - 1) if known is not None and known[0] is req else 0
                self.seen[req.request_id] = (req, n + s.num_draft_slots - 1)
                first_q.append(n - valid)
            else:
                first_q.append(1)
            first_seq.append(n)
        seconds = self.cost.step_time(first_q, first_seq, len(first_q)).total_s
        for i in range(1, max(s.num_draft_slots for s in drafting)):
            seq = [s.request.num_tokens + i for s in drafting if s.num_draft_slots > i]
            seconds += self.cost.step_time([1] * len(seq), seq, len(seq)).total_s
        return seconds
