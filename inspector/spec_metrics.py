"""Speculative-decoding statistics, folded from SpecDecode events (vLLM's counters and what they imply).

Counters as vLLM names them: drafts (verifications that had draft tokens), draft tokens, accepted tokens,
accepted tokens per draft position. From them: the acceptance rate a (accepted / drafted tokens), the mean
acceptance length (1 + accepted / drafts: tokens a verification step emits per request), per-position
conditional acceptance (accepted at position i among drafts that reached position i with all earlier ones
accepted), a histogram of accepted counts, the draft phase's share of the steps' time, and the tokens per
step independent acceptance predicts, (1 - a^(k+1)) / (1 - a) at the mean k, beside the observed mean
acceptance length. The a of that formula is the per-token acceptance (the probability that a draft the
target examines is accepted: accepted / (accepted + rejections), its maximum-likelihood estimate), not the
acceptance rate (accepted / drafted tokens, which counts the drafts after a rejection as not accepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvscope.events.records import RunInfo, SpecDecode
from kvscope.inspector.event_fold import EventFold


@dataclass
class SpecDecodeSummary:
    method: str = ""
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    acceptance_rate: float = 0.0
    per_token_acceptance: float = 0.0  # accepted / (accepted + rejections): the a of (1 - a^(k+1)) / (1 - a)
    mean_acceptance_length: float = 0.0
    predicted_acceptance_length: float = 0.0
    conditional_acceptance: list[float] = field(default_factory=list)
    accepted_histogram: list[int] = field(default_factory=list)  # [n] = verifications that accepted n drafts
    mean_k: float = 0.0
    draft_time_s: float = 0.0
    rolled_back_blocks: int = 0


def expected_tokens_per_step(a: float, k: float) -> float:
    """Tokens per verification when each of k drafts is accepted with probability a, independently, until the
    first rejection: 1 + a + ... + a^k = (1 - a^(k+1)) / (1 - a)."""
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1.0)) / (1.0 - a)


class SpecDecodeStats(EventFold):
    """Accumulates SpecDecode events; `summary()` at any moment (None before any draft)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.method = ""
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted = 0
        self.num_rejections = 0  # verifications that rejected a draft
        self.num_draft_slots = 0
        self.accepted_per_pos: list[int] = []
        self.reached_per_pos: list[int] = []  # drafts whose position i was verified (all before it accepted)
        self.histogram: list[int] = []
        self.draft_ns = 0
        self.rolled_back_blocks = 0
        self._last_step = -1

    def on_run_info(self, ev: RunInfo) -> None:
        self._reset()

    def on_spec_decode(self, ev: SpecDecode) -> None:
        self.method = ev.method
        self.num_drafts += 1
        self.num_draft_tokens += ev.num_draft_tokens
        self.num_accepted += ev.num_accepted
        self.num_rejections += ev.num_accepted < ev.num_draft_tokens
        self.num_draft_slots += ev.num_draft_slots
        self.rolled_back_blocks += ev.rolled_back_blocks
        reached = min(ev.num_accepted + 1, ev.num_draft_tokens)
        _grow(self.accepted_per_pos, ev.num_draft_tokens)
        _grow(self.reached_per_pos, ev.num_draft_tokens)
        for i in range(reached):
            self.reached_per_pos[i] += 1
        for i in range(ev.num_accepted):
            self.accepted_per_pos[i] += 1
        _grow(self.histogram, ev.num_accepted + 1)
        self.histogram[ev.num_accepted] += 1
        if ev.step != self._last_step:  # the draft phase is the step's, shared by its requests
            self._last_step = ev.step
            self.draft_ns += ev.draft_ns

    def summary(self) -> SpecDecodeSummary | None:
        if not self.num_drafts:
            return None
        a = self.num_accepted / self.num_draft_tokens if self.num_draft_tokens else 0.0
        k = self.num_draft_tokens / self.num_drafts
        examined = self.num_accepted + self.num_rejections
        per_token = self.num_accepted / examined if examined else 0.0
        return SpecDecodeSummary(
            method=self.method,
            num_drafts=self.num_drafts,
            num_draft_tokens=self.num_draft_tokens,
            num_accepted_tokens=self.num_accepted,
            accepted_per_pos=list(self.accepted_per_pos),
            acceptance_rate=a,
            per_token_acceptance=per_token,
            mean_acceptance_length=1.0 + self.num_accepted / self.num_drafts,
            predicted_acceptance_length=expected_tokens_per_step(per_token, k),
            conditional_acceptance=[acc / n if n else 0.0 for acc, n in zip(self.accepted_per_pos,
                                                                            self.reached_per_pos)],
            accepted_histogram=list(self.histogram),
            mean_k=k,
            draft_time_s=self.draft_ns / 1e9,
            rolled_back_blocks=self.rolled_back_blocks,
        )


def _grow(values: list[int], n: int) -> None:
    if len(values) < n:
        values.extend([0] * (n - len(values)))
