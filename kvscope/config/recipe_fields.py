"""What recipes are made of: `Section` (a pydantic model that forbids unknown keys, naming the closest known one,
and checks its `rules`), field types that say what they expect (`must be a positive integer, got -4`), and
`validated`, which turns pydantic's first error into the one line of a RecipeError (`<where>: cache.block_size:
must be a positive integer, got -4`). A validator that raises ValueError(message) names its own field.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

from annotated_types import GroupedMetadata
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kvscope.errors import RecipeError

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, ValidationInfo
    from pydantic_core import CoreSchema

UNION_TAGS = ("random", "gguf", "hf", "preset")  # model.source: the tags pydantic puts in an error's location
Rules = Iterable[tuple[bool, str | None, str]]  # (broken, the field it names (None: the section), message)


def describe(value: Any) -> str:
    """A value as an error message quotes it: strings quoted, a mapping or a list by its type."""
    return type(value).__name__ if isinstance(value, (dict, list)) else repr(value)


def fail(field: str | None, message: str) -> PydanticCustomError:
    """An error at `field` (a dotted path below where it is raised; None: right there) saying `message`."""
    return PydanticCustomError("kvscope", "{message}", {"field": field, "message": message})


def unknown_key(key: Any, known: list[str]) -> PydanticCustomError:
    close = difflib.get_close_matches(str(key), known, n=1)
    return fail(str(key), f"unknown key ({f'did you mean {close[0]!r}?' if close else 'known: ' + ', '.join(known)})")


def expect(what: str) -> WrapValidator:
    """Any error of the value itself (not of an item inside it) becomes `must be <what>, got <value>`."""
    def check(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if any(not e["loc"] for e in exc.errors()):
                raise fail(None, f"must be {what}, got {describe(value)}") from None
            raise
    return WrapValidator(check)


@dataclass(frozen=True)
class Metadata(GroupedMetadata):
    """Several items of `Annotated` metadata as one (annotated-types' grouping, which pydantic unpacks in order),
    so that a helper can stand in an annotation: `Annotated[float, number(0.0)]`."""

    items: tuple[object, ...]

    def __iter__(self) -> Iterator[object]:
        return iter(self.items)


def number(lo: float, hi: float | None = None) -> Metadata:
    """A finite number >= lo (and <= hi): `Annotated[float, number(lo, hi)]`."""
    where = f">= {lo}" if hi is None else f"between {lo} and {hi}"
    return Metadata((*Field(strict=True, ge=lo, le=hi, allow_inf_nan=False).metadata,
                     expect(f"a finite number {where}")))


class OneOf:
    """The metadata of a Literal: `Annotated[Literal["a", "b"], OneOf()]` says `must be one of a, b, got ...`."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return expect(f"one of {', '.join(map(str, get_args(source)))}").__get_pydantic_core_schema__(source, handler)


def keys_in(known: list[str]) -> BeforeValidator:
    """A mapping whose keys are among `known` (null: an empty one)."""
    def check(value: Any) -> Any:
        for key in value if isinstance(value, dict) else ():
            if key not in known:
                raise unknown_key(key, known)
        return {} if value is None else value
    return BeforeValidator(check)


def made_by(cls: type, error: type[Exception]) -> Metadata:
    """`Annotated[cls, made_by(cls, error)]`: a `cls` (a dataclass) made from a mapping of its fields; `cls` checks
    them itself, and its `error` ("<section>.<field>: message") names the field here."""
    def make(value: Any) -> Any:
        if not isinstance(value, dict):
            raise fail(None, f"must be a mapping, got {describe(value)}")
        try:
            return cls(**value)
        except error as exc:
            field, _, message = str(exc).partition(": ")
            raise fail(field.partition(".")[2], message) from None
    return Metadata((PlainValidator(make), keys_in([f.name for f in fields(cls)])))


def _beside_recipe(path: str, info: ValidationInfo) -> str:
    """A relative file path that does not exist from here but does beside the recipe file: that one."""
    source, p = (info.context or {}).get("source", "<dict>"), Path(path)
    if source == "<dict>" or path == "smollm2" or p.is_absolute() or p.exists():  # smollm2: the packaged model
        return path
    return str(Path(source).parent / p) if (Path(source).parent / p).exists() else path


PositiveInt = Annotated[int, Field(strict=True, gt=0), expect("a positive integer")]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0), expect("a non-negative integer")]
Flag = Annotated[bool, Field(strict=True), expect("true or false")]
Text = Annotated[str, Field(strict=True), expect("a string")]
RecipePath = Annotated[Text, AfterValidator(_beside_recipe)]  # a file, found beside the recipe if not from here


class Section(BaseModel):
    """A mapping of a recipe: null means every default; an unknown key is named with the closest known one; a
    missing required key says what it needs (its Field's description); then the first broken rule is the error."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built once, with the first recipe

    def rules(self) -> Rules:
        """The rules across this section's fields."""
        return ()

    @model_validator(mode="wrap")
    @classmethod
    def _checked(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            section = handler({} if data is None else data)
        except ValidationError as exc:
            errors = exc.errors()
            for e in errors:
                if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
                    raise unknown_key(e["loc"][0], list(cls.model_fields)) from None
            field = cls.model_fields.get(str(errors[0]["loc"][0])) if len(errors[0]["loc"]) == 1 else None
            if errors[0]["type"] == "missing" and field is not None and field.description:
                raise fail(str(errors[0]["loc"][0]), field.description) from None
            raise
        for broken, field, message in section.rules():
            if broken:
                raise fail(field, message)
        return section


def validated(schema: Callable[..., Any], data: Any, source: str = "<dict>", root: str = "") -> Any:
    """`schema(data)` (a model's model_validate, a TypeAdapter's validate_python), or the RecipeError of its first
    error: `<source>: <root>.<field path>: <message>` (no source: the loader's model specs)."""
    try:
        return schema(data, context={"source": source or "<dict>"})
    except ValidationError as exc:
        e = exc.errors()[0]
    field = e["ctx"]["field"] if e["type"] == "kvscope" else None
    parts = [root, *(p for p in e["loc"] if p not in UNION_TAGS), field]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts if p not in (None, "")).lstrip(".")
    got = f", got {describe(e['input'])}"
    message = {"kvscope": e["msg"], "value_error": str(e.get("ctx", {}).get("error")), "missing": "is required",
               "extra_forbidden": "unknown key", "model_type": "must be a mapping" + got,
               "model_attributes_type": "must be a mapping" + got, "dict_type": "must be a mapping" + got,
               }.get(e["type"], e["msg"] + got)
    raise RecipeError(f"{source}: {path or 'recipe'}: {message}" if source else f"{path}: {message}")
