"""What recipes are made of: `Section` (a pydantic model that forbids unknown keys and names the closest known
one), field types that say what they expect (`must be a positive integer, got -4`), and the translation of
pydantic's first error into the one line a RecipeError carries (`cache.block_size: must be ..., got -4`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

UNION_TAGS = ("random", "gguf", "hf", "preset")  # model.source: the tags pydantic puts in an error's location


def describe(value: Any) -> str:
    """A value as an error message quotes it: strings quoted, a mapping or a list by its type."""
    return type(value).__name__ if isinstance(value, (dict, list)) else repr(value)


def fail(field: str | None, message: str) -> PydanticCustomError:
    """An error at `field` (a dotted path below where it is raised; None: right there) saying `message`."""
    return PydanticCustomError("kvscope", "{message}", {"field": field, "message": message})


def unknown_key(key: str, known: list[str]) -> PydanticCustomError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
    return fail(key, f"unknown key{hint}")


def at_most(value: int, limit: int, field: str, what: str) -> None:
    if value > limit:
        raise fail(field, f"{value} is more than {limit}, {what}")


def expect(what: str) -> WrapValidator:
    """Any error of the value itself (not of an item inside it) becomes `must be <what>, got <value>`."""
    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if any(not e["loc"] for e in exc.errors()):
                raise fail(None, f"must be {what}, got {describe(value)}") from None
            raise
    return WrapValidator(check)


def number(lo: float, hi: float | None = None) -> Any:
    """A finite number >= lo (and <= hi)."""
    where = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    return Annotated[float, Field(strict=True, ge=lo, le=hi, allow_inf_nan=False), expect(f"a finite number {where}")]


def one_of(*options: str) -> Any:
    return Annotated[Literal[options], expect(f"one of {', '.join(options)}")]


PositiveInt = Annotated[int, Field(strict=True, gt=0), expect("a positive integer")]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0), expect("a non-negative integer")]
Flag = Annotated[bool, Field(strict=True), expect("true or false")]
Text = Annotated[str, Field(strict=True), expect("a string")]


def needed() -> Any:
    """A key with no default: leaving it out reads as null (`must be a string, got None`)."""
    return Field(None, validate_default=True)


class Section(BaseModel):
    """A mapping of a recipe: null means every default; an unknown key is named with the closest known one;
    a missing required key says what it needs (its Field's description)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built once, with the first recipe

    @model_validator(mode="wrap")
    @classmethod
    def _name_keys(cls, data: Any, handler: Any) -> Any:
        try:
            return handler({} if data is None else data)
        except ValidationError as exc:
            errors = exc.errors()
            for e in errors:
                if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
                    raise unknown_key(str(e["loc"][0]), list(cls.model_fields)) from None
            e = errors[0]
            if e["type"] == "missing" and len(e["loc"]) == 1 and cls.model_fields[str(e["loc"][0])].description:
                raise fail(str(e["loc"][0]), str(cls.model_fields[str(e["loc"][0])].description)) from None
            raise


def _beside_recipe(path: str, info: ValidationInfo) -> str:
    """A relative file path that does not exist from here but does beside the recipe file: that one."""
    source = (info.context or {}).get("source", "<dict>")
    p = Path(path)
    if source == "<dict>" or path == "smollm2" or p.is_absolute() or p.exists():  # smollm2: the packaged model
        return path
    alt = Path(source).parent / p
    return str(alt) if alt.exists() else path


FilePath = Annotated[Text, AfterValidator(_beside_recipe)]  # a file, found beside the recipe if not from here


def error_line(exc: ValidationError) -> tuple[str, str]:
    """(field path, message) of pydantic's first error: `workload.chat[0][1].role`, `must be one of ...`."""
    e = exc.errors()[0]
    parts = [p for p in e["loc"] if p not in UNION_TAGS]
    if e["type"] == "kvscope" and e["ctx"]["field"]:
        parts.append(e["ctx"]["field"])
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    if e["type"] == "kvscope":
        return path, e["msg"]
    if e["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"must be a mapping, got {describe(e['input'])}"
    return path, f"{e['msg']}, got {describe(e['input'])}"
