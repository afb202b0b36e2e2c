"""The offline API: `LLM(recipe).generate(prompts, SamplingParams)`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvscope.config.recipe import Recipe, load_recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.request import RequestOutput
from kvscope.engine.core.request_check import Prompt
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import LoadedModel
from kvscope.events.bus import EventBus

_MINIMAL_WORKLOAD = {"prompts": ["-"]}


def as_recipe(recipe: Recipe | dict[str, Any] | str | Path) -> Recipe:
    """A Recipe from a Recipe, a dict (its workload may be omitted) or a YAML path."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        data = dict(recipe)
        data.setdefault("workload", _MINIMAL_WORKLOAD)
        return Recipe.from_dict(data)
    return load_recipe(recipe)


class LLM:
    """Load a model once; generate for batches of prompts with continuous batching."""

    def __init__(self, recipe: Recipe | dict[str, Any] | str | Path, loaded: LoadedModel | None = None,
                 bus: EventBus | None = None) -> None:
        self.recipe = as_recipe(recipe)
        self.engine = LLMEngine(self.recipe, loaded=loaded, bus=bus)
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Outputs in prompt order. Prompts are text, token-id lists or chat message lists."""
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        done: dict[int, RequestOutput] = {}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                done[out.request_id] = out
        return [done[i] for i in ids]
