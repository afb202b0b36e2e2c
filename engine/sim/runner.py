"""The simulated runner: ModelRunner's prepare / forward / sample, with the forward pass replaced by the
cost model's time for the step's actual batch, on a virtual clock.

prepare() reads each scheduled request's query and context length exactly as ModelRunner.prepare does
(the requests whose computed tokens reach their end are sampled), asks the step cost model
(kvscope.costmodel.sim_cost) for the step's time and advances the clock by the host overhead;
forward() advances it by the device time and returns no logits; sample() hands every sampled request a
filler token (never an EOS, so requests run to their output limit: the workload's output lengths, with
ignore_eos semantics). The scheduler, the block manager and every instrument run unchanged.

With speculative decoding (kvscope.engine.sim.speculation) a request verifying k drafts is priced as the
real runner runs it, 1 + k tokens and 1 + k LM-head rows, and its result is the drafts the acceptance model
accepts (drawn with the request's generator, the engine's seeded one) and one more filler token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvscope.costmodel.sim_cost import StepCostModel, StepTime
from kvscope.engine.core.request import Request
from kvscope.engine.core.scheduler import SchedulerOutput
from kvscope.engine.sim.speculation import accepted_drafts

if TYPE_CHECKING:
    import torch

START_NS = 1_000_000_000  # the virtual clock starts at 1 s (0 reads as "not yet" in some timestamps)


class SimClock:
    """Virtual nanoseconds: what `EventBus.clock` returns on a simulated device."""

    __slots__ = ("now",)

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)

    def advance_to(self, ns: int) -> None:
        """Jump over an idle gap (never backwards)."""
        if ns > self.now:
            self.now = ns


@dataclass(slots=True)
class SimBatch:
    """A step's batch as the cost model sees it (padding rows of the static baseline included)."""

    query_lens: list[int]
    seq_lens: list[int]
    sampled: list[Request]
    time: StepTime
    forward_start: int = 0
    verify_rows: int = 0  # draft tokens verified (each an extra LM-head row)


class SimRunner:
    """prepare / forward / sample of a simulated device (see the module docstring)."""

    model = None  # no weights

    def __init__(self, cost: StepCostModel, clock: SimClock, token_id: int,
                 acceptance_rate: float | None = None) -> None:
        self.cost = cost
        self.clock = clock
        self.token_id = token_id
        self.acceptance_rate = acceptance_rate  # speculative decoding's acceptance model (None: no drafts)
        self.last: SimBatch | None = None

    def prepare(self, out: SchedulerOutput) -> SimBatch:
        query_lens: list[int] = []
        seq_lens: list[int] = []
        sampled: list[Request] = []
        verify_rows = 0
        for s in out.scheduled:
            req, n = s.request, s.num_tokens
            end = req.num_computed_tokens + n
            query_lens.append(n)
            seq_lens.append(end)
            if req.spec_token_ids:  # its newest token and its drafts: 1 + k logits rows, verified
                sampled.append(req)
                verify_rows += len(req.spec_token_ids)
            elif end == req.num_tokens:
                sampled.append(req)
        pad = out.num_padding_tokens
        if pad:  # pad tokens go through every layer as one-token rows with no context (as in ModelRunner)
            query_lens += [1] * pad
            seq_lens += [1] * pad
        batch = SimBatch(query_lens, seq_lens, sampled,
                         self.cost.step_time(query_lens, seq_lens, len(sampled), verify_rows), verify_rows=verify_rows)
        self.clock.advance(batch.time.overhead_s)
        return batch

    def forward(self, batch: SimBatch) -> None:
        batch.forward_start = self.clock.now
        self.clock.advance(batch.time.forward_s)
        self.last = batch
        return None

    def sample(self, batch: SimBatch, logits: torch.Tensor | None) -> list[list[int] | None]:
        """A filler token for every sampled request (there are no logits: forward returned None); a verifying
        request gets its accepted drafts before it."""
        token, rate = self.token_id, self.acceptance_rate
        if not batch.verify_rows or rate is None:
            return [[token] for _ in batch.sampled]
        return [[token] * (1 + accepted_drafts(rate, len(r.spec_token_ids), r.generator)) if r.spec_token_ids
                else [token] for r in batch.sampled]
