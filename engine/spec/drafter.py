"""Drafters for speculative decoding: each proposes up to k tokens per decoding request and step.

One small interface (Drafter.propose) behind every method: it receives the step's drafting requests
(each with its reserved num_draft_slots) and sets each request's spec_token_ids (at most that many) and,
when its drafts were sampled, draft_probs (their distributions, for rejection sampling).

ngram (prompt lookup): the longest suffix of the request's own tokens, n_max down to n_min long, that
occurred before; propose the tokens that followed its latest earlier occurrence. No weights, no KV; a
point mass (draft_probs None).

On a simulated device every method is a kvscope.engine.sim.speculation.SimDrafter priced by its draft_shape.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from kvscope.errors import RecipeError

if TYPE_CHECKING:
    from kvscope.config.model_config import ModelConfig
    from kvscope.config.recipe import SpeculativeSpec
    from kvscope.engine.core.scheduler import ScheduledRequest
    from kvscope.engine.llm_engine import LLMEngine


class Drafter(Protocol):
    method: str

    def propose(self, drafting: list[ScheduledRequest]) -> None:
        """Set spec_token_ids (at most num_draft_slots) and draft_probs of each drafting request."""
        ...


class NgramDrafter:
    """Prompt lookup: continue the request as it continued the last time its newest n tokens occurred."""

    method = "ngram"

    def __init__(self, n_min: int, n_max: int) -> None:
        self.n_min = n_min
        self.n_max = n_max

    def propose(self, drafting: list[ScheduledRequest]) -> None:
        for s in drafting:
            s.request.spec_token_ids = lookup(s.request.token_ids, s.num_draft_slots, self.n_min, self.n_max)


def lookup(tokens: list[int], k: int, n_min: int, n_max: int) -> list[int]:
    """Up to k tokens that followed an earlier occurrence of the longest suffix of `tokens` whose length is in
    n_min..n_max: the latest occurrence followed by k tokens, else the one followed by the most (an occurrence
    that overlaps the suffix is followed by fewer); [] when no such suffix occurred before."""
    size = len(tokens)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        suffix = tokens[size - n:]
        first = suffix[0]
        best: list[int] = []
        for i in range(size - n - 1, -1, -1):
            if tokens[i] == first and tokens[i:i + n] == suffix:
                follow = tokens[i + n:i + n + k]
                if len(follow) == k:
                    return follow
                if len(follow) > len(best):
                    best = follow
        if best:
            return best
    return []


def make_drafter(spec: SpeculativeSpec | None, engine: LLMEngine) -> Drafter | None:
    """The recipe's drafter for `engine` (None without speculative decoding); RecipeError naming the field
    when the method does not fit the target."""
    if spec is None:
        return None
    where = engine.recipe.source
    if spec.method == "layerskip":
        layers = engine.config.num_layers
        if not 1 <= spec.num_layers <= layers - 1:
            raise RecipeError(f"{where}: speculative.num_layers: must be between 1 and {layers - 1} (the target "
                              f"has {layers} layers), got {spec.num_layers}")
    if engine.sim is not None:  # a simulated device: the drafts' cost, no tokens (kvscope.engine.sim.speculation)
        from kvscope.engine.sim.speculation import SimDrafter
        return SimDrafter(spec.method, engine.sim, draft_shape(spec, engine))
    if spec.method == "ngram":
        return NgramDrafter(spec.prompt_lookup_min, spec.prompt_lookup_max)
    if spec.method == "layerskip":
        from kvscope.engine.spec.layerskip_drafter import LayerSkipDrafter
        return LayerSkipDrafter(engine, spec.num_layers)
    from kvscope.engine.spec.draft_model_drafter import DraftModelDrafter
    return DraftModelDrafter.for_engine(engine, spec)


def draft_shape(spec: SpeculativeSpec, engine: LLMEngine) -> ModelConfig | None:
    """The shape whose passes draft (None: ngram, which runs no model): the target's first num_layers layers
    (layerskip) or the draft model's own shape, its weights not read (draft_model)."""
    if spec.method == "layerskip":
        return replace(engine.config, num_layers=spec.num_layers)
    if spec.method != "draft_model":
        return None
    from kvscope.engine.model.loader import load_shape

    assert spec.model is not None  # the recipe requires it
    try:
        config, _ = load_shape(spec.model)
    except RecipeError as exc:
        raise RecipeError(f"{engine.recipe.source}: speculative.{exc}") from None
    from kvscope.engine.spec.draft_model_drafter import check_draft_vocab

    check_draft_vocab(config, engine)
    return config
