"""The request bodies of /v1/completions and /v1/chat/completions as vLLM reads them, and what they become for
the engine: a prompt, SamplingParams and the stream options.

Fields: model, prompt (text or token ids) / messages, max_tokens / max_completion_tokens, temperature, top_p,
top_k, seed, stop, stop_token_ids, ignore_eos, stream, stream_options.include_usage. Options kvscope does not
serve (n > 1, logprobs, best_of, echo, suffix) are refused naming the field; other unknown fields are ignored,
as vLLM does. Unset sampling fields take the recipe's `sampling` values (the recipe plays the part of a
model's generation config). The sampling fields are parsed as JSON types (as vLLM's models do), then
SamplingParams checks their rules (its RequestError becomes the 400, `param` naming the field). Every problem
is a ServeError(400) naming the field.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from kvscope.config.sampling_params import SamplingParams
from kvscope.errors import RequestError
from kvscope.serve.server.body import parse_json_object
from kvscope.serve.server.errors import ServeError, bad_request

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    # the sampling fields, parsed as JSON types the way vLLM's pydantic models do ("0.7" is 0.7); their rules
    # (ranges, non-empty stop strings, ...) are SamplingParams'
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    best_of: int | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None


@dataclass(slots=True)
class Parsed:
    """A request ready for the engine: prompt (text, token ids or chat messages), sampling, streaming."""

    prompt: Any
    params: SamplingParams
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    model: str | None


def parse_body(raw: bytes, cls: type[_Common]) -> _Common:
    """The JSON body (kvscope.serve.server.body: malformed or too deeply nested is a 400) validated as `cls`;
    ServeError(400) naming the first bad field."""
    data = parse_json_object(raw)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        got = reprlib.repr(err.get("input"))  # bounded: the input may be megabytes of a client's JSON
        raise bad_request(f"{where}: {err['msg']} (got {got})"[:500], param=where) from None


def _refuse_unsupported(req: _Common) -> None:
    if req.n not in (None, 1):
        raise bad_request(f"n: only n=1 is supported, got {req.n}", "n")
    if req.best_of not in (None, 1):
        raise bad_request(f"best_of: not supported, got {req.best_of}", "best_of")
    if isinstance(req, CompletionRequest):
        if req.logprobs is not None:
            raise bad_request("logprobs: not supported", "logprobs")
        if req.echo:
            raise bad_request("echo: not supported", "echo")
        if req.suffix is not None:
            raise bad_request("suffix: not supported", "suffix")
    if isinstance(req, ChatCompletionRequest) and (req.logprobs or req.top_logprobs is not None):
        raise bad_request("logprobs: not supported", "logprobs" if req.logprobs else "top_logprobs")


def _prompt_of(req: _Common) -> Any:
    if isinstance(req, CompletionRequest):
        p = req.prompt
        if isinstance(p, list) and p and not isinstance(p[0], int):
            if len(p) != 1:
                raise bad_request(f"prompt: a batch of {len(p)} prompts is not supported (send one per request)",
                                  "prompt")
            p = p[0]
        if (isinstance(p, str) and not p) or (isinstance(p, list) and not p):
            raise bad_request("prompt: empty prompt", "prompt")
        return p
    assert isinstance(req, ChatCompletionRequest)  # the two request bodies
    messages = []
    for i, m in enumerate(req.messages):
        role, content = m.get("role"), m.get("content", "")
        if not isinstance(role, str):
            raise bad_request(f"messages[{i}].role: expected a string, got {role!r}", f"messages[{i}].role")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content
                              if isinstance(part, dict) and part.get("type") == "text")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad_request(f"messages[{i}].content: expected text, got {type(content).__name__}",
                              f"messages[{i}].content")
        messages.append({"role": role, "content": content})
    if not messages:
        raise bad_request("messages: at least one message is needed", "messages")
    return messages


def to_engine(req: _Common, defaults: SamplingParams) -> Parsed:
    """The engine's view of a validated request (ServeError(400) for what it cannot serve)."""
    _refuse_unsupported(req)
    prompt = _prompt_of(req)
    max_tokens = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        max_tokens = req.max_completion_tokens
    given = max_tokens is not None
    if max_tokens is None:
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if isinstance(req, CompletionRequest) else 2**31 - 1
    top_k = req.top_k if req.top_k is not None else defaults.top_k
    if top_k == -1:  # vLLM's "no top-k"
        top_k = 0
    try:
        params = SamplingParams(
            temperature=defaults.temperature if req.temperature is None else req.temperature,
            top_k=top_k,
            top_p=defaults.top_p if req.top_p is None else req.top_p,
            max_tokens=max_tokens,
            seed=req.seed if req.seed is not None else defaults.seed,
            stop=[req.stop] if isinstance(req.stop, str) else req.stop if req.stop is not None else [],
            stop_token_ids=req.stop_token_ids if req.stop_token_ids is not None else [],
            ignore_eos=req.ignore_eos,
        )
    except RequestError as exc:
        field = str(exc).split(":", 1)[0].removeprefix("sampling.")
        raise ServeError(400, str(exc).removeprefix("sampling."), field) from None
    opts = req.stream_options
    return Parsed(prompt, params, given, bool(req.stream), bool(opts and opts.include_usage), req.model)
