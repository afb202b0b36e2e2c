"""Rendering chat messages into a prompt string with a model's Jinja chat template.

Behaves like Hugging Face's apply_chat_template for the common templates: a sandboxed
Jinja environment with trim_blocks / lstrip_blocks, `raise_exception`, `strftime_now`, and
the variables messages, add_generation_prompt, bos_token, eos_token.
Models without a template get DEFAULT_CHAT_TEMPLATE (ChatML).
"""

from __future__ import annotations

import datetime
import json
from functools import lru_cache
from typing import Any

from kvscope.errors import RequestError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise RequestError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """messages must be a list of {"role": str, "content": str} dicts; RequestError names the bad one."""
    if not isinstance(messages, list):
        raise RequestError(f"messages: expected a list of {{role, content}} objects, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}]: expected an object with role and content, got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise RequestError(f"messages[{i}].{key}: expected a string, got {message.get(key)!r}")
    return messages


def render_chat_template(
    template: str | None,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for messages; template None uses DEFAULT_CHAT_TEMPLATE."""
    validate_messages(messages)
    try:
        compiled = _compile(template or DEFAULT_CHAT_TEMPLATE)
        return compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token,
        )
    except RequestError:
        raise
    except Exception as exc:  # jinja2 syntax / runtime errors from a model-provided template
        raise RequestError(f"chat template: {type(exc).__name__}: {exc}") from None
