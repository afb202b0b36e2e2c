"""Sampling parameters: how one request picks its tokens and when it stops (pure python: recipes use it too)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    temperature 0 means greedy. top_k 0 and top_p 1.0 disable those filters.
    seed: a per-request generator seed (None draws from the engine's generator).
    stop: strings that end the output (not included in the text).
    stop_token_ids: extra token ids that end the output (included in token_ids).
    ignore_eos: keep generating past EOS until max_tokens.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0
