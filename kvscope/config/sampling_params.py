"""Sampling parameters: how one request picks its tokens and when it stops (pure python: recipes use it too).

The one validator of sampling rules: a recipe's `sampling` section (kvscope.config.recipe_sections) and an
HTTP body's sampling fields (kvscope.serve.server.protocol) are made into SamplingParams, and its error is
re-labelled there (RecipeError naming the file, a 400 naming the param). Checked when made and again when a
request is admitted (`validate`): a value that could not be sampled from (a NaN temperature, top_p 0,
max_tokens 0, an empty stop string, a seed torch cannot take) is a RequestError naming the field, never a
failure in the middle of a step. A slotted dataclass: the engine reads a request's params every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kvscope.errors import RequestError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(slots=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    temperature 0 means greedy. top_k 0 and top_p 1.0 disable those filters.
    seed: a per-request generator seed (None draws from the engine's generator).
    stop: strings that end the output (not included in the text); one string may be given as is.
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

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, not a set of characters
            self.stop = [self.stop]
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validate(self, where: str = "sampling") -> None:
        """RequestError naming the first field (`where.field`) whose value cannot be used."""
        problem = _problem(self)
        if problem is not None:
            name, expected, value = problem
            raise RequestError(f"{where}.{name}: must be {expected}, got {value!r}")


def _ids(value: Any, ok: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(ok(v) for v in value)


_RULES: tuple[tuple[str, str, Any], ...] = (  # (field, what it must be, the check of its value), in field order
    ("temperature", "a finite number >= 0", lambda v: _is_number(v) and v >= 0),
    ("top_k", "an integer >= 0 (0: no top-k)", lambda v: _is_int(v) and v >= 0),
    ("top_p", "a finite number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1),
    ("max_tokens", "a positive integer", lambda v: _is_int(v) and v >= 1),
    ("seed", f"null or an integer from 0 to {MAX_SEED}", lambda v: v is None or (_is_int(v) and 0 <= v <= MAX_SEED)),
    ("stop", "a list of non-empty strings", lambda v: _ids(v, lambda s: isinstance(s, str) and s)),
    ("stop_token_ids", "a list of token ids (integers >= 0)", lambda v: _ids(v, lambda t: _is_int(t) and t >= 0)),
    ("ignore_eos", "true or false", lambda v: isinstance(v, bool)),
)


def _problem(p: SamplingParams) -> tuple[str, str, Any] | None:
    """(field, what it must be, its value) for the first unusable field, or None."""
    return next(((name, what, getattr(p, name)) for name, what, ok in _RULES if not ok(getattr(p, name))), None)
