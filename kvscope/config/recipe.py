"""Recipes: the YAML that names a model, a cache, a scheduler, a workload and sampling.

`load_recipe(path)` parses and validates; every problem becomes one RecipeError line naming the file and the
field path (`cache.block_size: must be a positive integer, got -4`), with the closest known name suggested for
an unknown key. The sections are kvscope.config.recipe_sections; the rules across sections are here, and the
`sampling` section is SamplingParams (its own checks, re-labelled).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, PrivateAttr

from kvscope.config.model_spec import PRESET_HAS_NO_WEIGHTS, ModelSpec
from kvscope.config.recipe_fields import Flag, OneOf, Rules, Section, Text, expect, keys_in, made_by, validated
from kvscope.config.recipe_sections import (
    CacheSpec,
    DeploymentSpec,
    SchedulerSpec,
    SimSpec,
    SpeculativeSpec,
    WorkloadSpec,
)
from kvscope.config.sampling_params import SamplingParams
from kvscope.errors import RecipeError, RequestError

OVERRIDABLE = ["model", "dtype", "device", "attention_backend", "cache", "scheduler", "sampling", "workload",
               "speculative", "sim", "deployment"]  # what a variant may change


class Variant(Section):
    """A variant of a recipe: its name and the sections it changes (Recipe.with_overrides); `variant["name"]`
    reads it as the mapping it was written as."""

    name: Text = Field(None, validate_default=True)
    overrides: Annotated[dict[str, Any], keys_in(OVERRIDABLE)] = {}

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class Recipe(Section):
    name: Text = "recipe"  # the file's stem when read from a file
    description: Text = ""
    model: ModelSpec = Field(None, validate_default=True)  # gguf smollm2
    dtype: Annotated[Literal["float32", "float16", "bfloat16"], OneOf()] = "float32"
    device: Annotated[Literal["cpu", "cuda", "auto", "sim"], OneOf()] = "cpu"
    attention_backend: Annotated[Literal["torch", "triton", "auto"], OneOf()] = "auto"
    cuda_graphs: Flag = False  # decode steps replayed as CUDA graphs (kvscope.engine.worker.cuda_graphs)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    sampling: Annotated[SamplingParams, made_by(SamplingParams, RequestError)] = Field(None, validate_default=True)
    workload: WorkloadSpec = Field(None, validate_default=True)
    speculative: SpeculativeSpec | None = None
    variants: Annotated[list[Variant], expect("a list of {name, overrides}"),
                        BeforeValidator(lambda v: [] if v is None else v)] = []
    sim: SimSpec | None = None  # set exactly when device is "sim"
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)
    _source: str = PrivateAttr("<dict>")
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    source = property(lambda self: self._source, doc="The recipe file (or <dict>).")
    raw = property(lambda self: self._raw, doc="The mapping as written (variants and Ray engines rebuild from it).")

    def rules(self) -> Rules:
        device, backend, spec, policy = self.device, self.attention_backend, self.speculative, self.scheduler.policy
        synthetic, max_len = self.workload.synthetic, self.scheduler.max_model_len
        given = synthetic.model_fields_set if synthetic else set()
        yield (self.cuda_graphs and (device in ("cpu", "sim") or backend == "torch"), "cuda_graphs",
               f"needs device cuda (or auto, on a GPU) and the triton attention backend; this recipe has device "
               f"{device}, attention_backend {backend}")
        yield (device != "sim" and "sim" in self.model_fields_set, "sim",
               f"only a simulated device reads it (device: sim), but device is {device}")
        yield device != "sim" and self.model.source == "preset", "model.source", PRESET_HAS_NO_WEIGHTS
        for where, m in (("model", self.model), ("speculative.model", spec.model if spec is not None else None)):
            yield (m is not None and m.source != "preset" and "name" in m.model_fields_set, f"{where}.name",
                   f"only a preset model takes a name (source: preset), not {m and m.source}")
        if synthetic is not None and "prompt_len" in given and (longest := synthetic.prompt_len.max) > max_len - 1:
            yield (True, "workload.synthetic.prompt_len", f"{longest} is more than {max_len - 1}, the longest prompt "
                   f"scheduler.max_model_len {max_len} leaves room to generate after")
        if synthetic is not None and "shared_prefix" in given and (shared := synthetic.shared_prefix) > max_len - 2:
            yield (True, "workload.synthetic.shared_prefix", f"{shared} is more than {max_len - 2}, the longest "
                   f"shared prefix scheduler.max_model_len {max_len} allows")
        yield (spec is not None and policy == "static", "speculative",
               "needs scheduler.policy continuous (the static baseline has no drafts)")
        model = {k for k in ("acceptance_rate", "acceptance_from") if getattr(spec, k, None) is not None}
        yield (spec is not None and device == "sim" and not model, "speculative.acceptance_rate",
               "a simulated device needs it (or acceptance_from, a real run's summary): the probability (0 to 1) "
               "that each draft is accepted, since its drafts are no real tokens to verify")
        for key in sorted(model):
            yield (device != "sim", f"speculative.{key}",
                   f"only a simulated device reads it (a real device verifies its drafts), but device is {device}")
        yield (self.cache.allocator == "contiguous" and (spec is not None or self.deployment.disaggregated),
               "cache.allocator", "contiguous does not combine with speculative decoding or disaggregation (both "
               "hand blocks back or take them from elsewhere)")
        yield (not self.cache.kv_cache and (spec is not None or policy == "static" or self.deployment.disaggregated),
               "cache.kv_cache", "false (the no-KV-cache baseline) needs scheduler.policy continuous, no speculative "
               "decoding and a colocated deployment")
        for what, bad in (("scheduler.policy static", policy == "static"), ("speculative", spec is not None),
                          ("device: sim over transport ray (simulated engines run in this process)",
                           device == "sim" and self.deployment.transport == "ray")):
            yield (bad and self.deployment.disaggregated, "deployment.mode",
                   f"disaggregated does not combine with {what} yet")

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Recipe:
        """Validate a recipe mapping (RecipeError naming `source` and the field); its variants are checked too."""
        recipe = validated(cls.model_validate, data, source)
        recipe._source, recipe._raw = source, copy.deepcopy(data)
        if "name" not in data and source != "<dict>":
            recipe.name = Path(source).stem
        if recipe.device == "sim" and recipe.sim is None:
            recipe.sim = SimSpec()
        for v in recipe.variants:  # a variant is a recipe too: check it now, not when bench runs it
            try:
                recipe.with_overrides(v.overrides)
            except RecipeError as exc:
                raise RecipeError(f"{exc} (in variant {v.name!r})") from None
        return recipe

    def with_overrides(self, overrides: dict[str, Any], name: str | None = None) -> Recipe:
        """A new recipe: this one's raw dict deep-merged with `overrides` (variants use this)."""
        merged = _deep_merge(copy.deepcopy(self.raw), overrides)
        merged.pop("variants", None)
        return Recipe.from_dict({**merged, "name": name} if name else merged, source=self.source)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (RecipeError on any problem)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: no such recipe file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{p}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"{p}: malformed YAML: {where}{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}"
                          ) from None
    return Recipe.from_dict({} if data is None else data, source=str(p))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`; a model mapping that names another source replaces the base's."""
    for key, value in over.items():
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and value.get("source", old.get("source", "gguf")) \
                == old.get("source", "gguf"):
            base[key] = _deep_merge(old, value)
        else:
            base[key] = copy.deepcopy(value)
    return base
