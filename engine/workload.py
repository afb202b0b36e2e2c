"""Workloads: the list of requests a recipe describes, each with its arrival offset and sampling.

Prompts and chat conversations come from the recipe as text; synthetic requests
draw random token ids and lengths from a seeded generator (the same recipe
always gives the same workload), optionally sharing a common prefix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams


@dataclass(slots=True)
class WorkItem:
    """One request of a workload: when it arrives (seconds after start), what it asks, how it samples."""

    arrival_s: float
    prompt: Any  # str | list[int] | list[dict]
    params: SamplingParams


def _arrivals(n: int, rate: float, rng: random.Random) -> list[float]:
    if rate <= 0:
        return [0.0] * n
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def build_workload(recipe: Recipe, vocab_size: int, special_ids: set[int]) -> list[WorkItem]:
    """The recipe's requests in arrival order."""
    w = recipe.workload
    base = recipe.sampling
    items: list[WorkItem] = []
    texts: list[Any] = list(w.prompts) + [list(c) for c in w.chat]
    texts = texts * w.repeat
    rng = random.Random(w.synthetic.seed if w.synthetic else 0)
    for t, prompt in zip(_arrivals(len(texts), w.arrival_rate, rng), texts):
        items.append(WorkItem(t, prompt, replace(base, stop=list(base.stop), stop_token_ids=list(base.stop_token_ids))))
    if w.synthetic:
        s = w.synthetic
        lo = 100 if vocab_size > 1000 else 32
        pool = [t for t in range(lo, vocab_size) if t not in special_ids]
        prefix = [rng.choice(pool) for _ in range(s.shared_prefix)]
        rate = s.arrival_rate or w.arrival_rate
        for t in _arrivals(s.num_requests, rate, rng):
            plen = rng.randint(s.prompt_len.min, s.prompt_len.max)
            olen = rng.randint(s.output_len.min, s.output_len.max)
            body = [rng.choice(pool) for _ in range(max(plen - len(prefix), 1))]
            params = replace(base, max_tokens=olen, ignore_eos=True, stop=[], stop_token_ids=[])
            items.append(WorkItem(t, prefix + body, params))
    items.sort(key=lambda it: it.arrival_s)
    return items
