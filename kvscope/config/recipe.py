"""Recipes: the YAML that names a model, a cache, a scheduler, a workload and sampling.

`load_recipe(path)` parses and validates; every problem becomes one RecipeError line naming the file and the
field path (`cache.block_size: must be a positive integer, got -4`), with the closest known name suggested for
an unknown key. The sections are kvscope.config.recipe_sections; the rules across sections are here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from kvscope.config.model_spec import PRESET_HAS_NO_WEIGHTS, ModelSpec
from kvscope.config.recipe_fields import Flag, Section, Text, error_line, fail, one_of
from kvscope.config.recipe_sections import (
    CacheSpec,
    DeploymentSpec,
    LengthSpec,
    Sampling,
    SchedulerSpec,
    SimSpec,
    SpeculativeSpec,
    SyntheticSpec,
    Variants,
    WorkloadSpec,
)
from kvscope.errors import RecipeError

__all__ = ["CacheSpec", "DeploymentSpec", "LengthSpec", "Recipe", "SchedulerSpec", "SimSpec", "SpeculativeSpec",
           "SyntheticSpec", "WorkloadSpec", "load_recipe"]
DTYPES = ("float32", "float16", "bfloat16")


class Recipe(Section):
    name: Text = "recipe"  # the file's stem when read from a file
    description: Text = ""
    model: ModelSpec = Field(None, validate_default=True)  # gguf smollm2
    dtype: one_of(*DTYPES) = "float32"
    device: one_of("cpu", "cuda", "auto", "sim") = "cpu"
    attention_backend: one_of("torch", "triton", "auto") = "auto"
    cuda_graphs: Flag = False  # decode steps replayed as CUDA graphs (kvscope.engine.worker.cuda_graphs)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    sampling: Sampling = Field(default_factory=dict, validate_default=True)
    workload: WorkloadSpec = Field(default_factory=dict, validate_default=True)
    speculative: SpeculativeSpec | None = None
    variants: Variants = []
    sim: SimSpec | None = None  # set exactly when device is "sim"
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)
    _source: str = PrivateAttr("<dict>")
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The recipe file (or "<dict>")."""
        return self._source

    @property
    def raw(self) -> dict[str, Any]:
        """The mapping as written (variants and the Ray engines rebuild the recipe from it)."""
        return self._raw

    @model_validator(mode="after")
    def _sections_agree(self) -> Recipe:
        device, backend, mode = self.device, self.attention_backend, self.deployment
        if self.cuda_graphs and (device in ("cpu", "sim") or backend == "torch"):
            raise fail("cuda_graphs", f"needs device cuda (or auto, on a GPU) and the triton attention backend; "
                                      f"this recipe has device {device}, attention_backend {backend}")
        if device == "sim":
            self.sim = self.sim or SimSpec()
        elif "sim" in self.model_fields_set:
            raise fail("sim", f"only a simulated device reads it (device: sim), but device is {device}")
        elif self.model.source == "preset":
            raise fail("model.source", PRESET_HAS_NO_WEIGHTS)
        spec = self.speculative
        for where, model in (("model", self.model), ("speculative.model", spec and spec.model)):
            if model is not None and model.source != "preset" and "name" in model.model_fields_set:
                raise fail(f"{where}.name", f"only a preset model takes a name (source: preset), not {model.source}")
        self._fits_context(self.scheduler.max_model_len)
        if spec is not None and self.scheduler.policy == "static":
            raise fail("speculative", "needs scheduler.policy continuous (the static baseline has no drafts)")
        if spec is not None and device == "sim":
            raise fail("speculative", "is not simulated yet: a simulated device has no draft tokens to verify "
                                      "(drop speculative, or run on cpu / cuda)")
        for what, bad in (("scheduler.policy static", self.scheduler.policy == "static"),
                          ("speculative", spec is not None),
                          ("device: sim over transport ray (simulated engines run in this process)",
                           device == "sim" and mode.transport == "ray")):
            if mode.disaggregated and bad:
                raise fail("deployment.mode", f"disaggregated does not combine with {what} yet")
        return self

    def _fits_context(self, max_model_len: int) -> None:
        s = self.workload.synthetic
        if s is None:
            return
        where = f"scheduler.max_model_len {max_model_len}"
        if "prompt_len" in s.model_fields_set and s.prompt_len.max > max_model_len - 1:
            raise fail("workload.synthetic.prompt_len", f"{s.prompt_len.max} is more than {max_model_len - 1}, "
                                                        f"the longest prompt {where} leaves room to generate after")
        if "shared_prefix" in s.model_fields_set and s.shared_prefix > max_model_len - 2:
            raise fail("workload.synthetic.shared_prefix", f"{s.shared_prefix} is more than {max_model_len - 2}, "
                                                           f"the longest shared prefix {where} allows")

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Recipe:
        """Validate a recipe mapping (RecipeError naming `source` and the field); its variants are checked too."""
        try:
            recipe = cls.model_validate(data, context={"source": source})
        except ValidationError as exc:
            path, message = error_line(exc)
            raise RecipeError(f"{source}: {path or 'recipe'}: {message}") from None
        recipe._source, recipe._raw = source, copy.deepcopy(data)
        if "name" not in data and source != "<dict>":
            recipe.name = Path(source).stem
        for v in recipe.variants:  # a variant is a recipe too: check it now, not when bench runs it
            try:
                recipe.with_overrides(v["overrides"])
            except RecipeError as exc:
                raise RecipeError(f"{exc} (in variant {v['name']!r})") from None
        return recipe

    def with_overrides(self, overrides: dict[str, Any], name: str | None = None) -> Recipe:
        """A new recipe: this one's raw dict deep-merged with `overrides` (variants use this)."""
        merged = _deep_merge(copy.deepcopy(self.raw), overrides)
        merged.pop("variants", None)
        if name:
            merged["name"] = name
        return Recipe.from_dict(merged, source=self.source)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (RecipeError on any problem)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: no such recipe file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{p}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{p}: malformed YAML: {where}{problem}") from None
    return Recipe.from_dict({} if data is None else data, source=str(p))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`; a model mapping that names another source replaces the base's (its keys are
    another source's)."""
    for key, value in over.items():
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and _same_source(old, value):
            _deep_merge(old, value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _same_source(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return new.get("source", old.get("source", "gguf")) == old.get("source", "gguf")
