"""One generation request from the engine's deltas to the OpenAI response: the whole body, or SSE chunks.

Completions and chat share the path and differ only in the shape of a choice (`text` vs `message` /
`delta`). Text comes from OutputTextStream (incremental detokenization that never sends a stop string),
so the concatenated stream equals the non-streaming text. The first chunk with `choices` carries the
first token (no early empty role chunk, so a client's TTFT is honest); with
`stream_options.include_usage` every chunk has `"usage": null` and a last chunk with empty `choices`
carries the usage. An error after streaming began is an error record, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.text_delta import OutputTextStream
from kvscope.engine.model.tokenizer import Tokenizer
from kvscope.errors import RequestError
from kvscope.serve.server.engine_loop import Channel, Delta, EngineLoop, EngineStopped
from kvscope.serve.server.errors import ServeError, sse_error

DONE = "data: [DONE]\n\n"


@dataclass(slots=True)
class Job:
    """What a handler hands over: the prompt's token ids, sampling, and how to answer."""

    chat: bool
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    include_usage: bool = False

    @property
    def id_prefix(self) -> str:
        return "chatcmpl" if self.chat else "cmpl"

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": None}


async def _deltas(engine: EngineLoop, channel: Channel) -> AsyncIterator[Delta]:
    """The request's deltas; those that queued up while the handler was busy come out as one (one chunk for
    several steps' tokens, as vLLM's output processor merges them), so a loaded event loop catches up."""
    queue = channel.deltas
    while True:
        delta = await queue.get()
        while delta.finish_reason is None and not queue.empty():
            later = queue.get_nowait()
            delta = Delta(delta.token_ids + later.token_ids, later.finish_reason, later.num_prompt_tokens,
                          later.num_cached_tokens, later.error)
        yield delta
        if delta.finish_reason is not None:
            return


async def complete(engine: EngineLoop, tokenizer: Tokenizer, job: Job) -> dict[str, Any]:
    """The non-streaming response body (ServeError if the engine refused or failed the request). Cancelled
    (the client left), the request is aborted."""
    try:
        channel = await engine.submit(job.prompt_ids, job.params)
    except RequestError as exc:
        raise ServeError(400, str(exc)) from None
    except EngineStopped as exc:
        raise ServeError(503, str(exc)) from None
    text_stream = OutputTextStream(tokenizer, job.params.stop)
    parts: list[str] = []
    n_out, reason = 0, None
    try:
        async for d in _deltas(engine, channel):
            if d.error is not None:
                raise ServeError(500, d.error)
            n_out += len(d.token_ids)
            parts.append(text_stream.push(d.token_ids))
            reason = d.finish_reason
        parts.append(text_stream.finish())
    finally:
        engine.abort(channel)  # a no-op once finished; at once when the client left
    if reason == "error":
        raise ServeError(500, "the request failed while sampling")
    text = "".join(parts)
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason, "stop_reason": None}
    if job.chat:
        choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
    else:
        choice["text"] = text
    return {"id": f"{job.id_prefix}-{uuid.uuid4().hex}", "object": job.object, "created": int(time.time()),
            "model": job.model, "choices": [choice], "usage": _usage(len(job.prompt_ids), n_out)}


async def stream(engine: EngineLoop, tokenizer: Tokenizer, job: Job) -> AsyncIterator[str]:
    """SSE records for a streaming response; closed early (the client left), the request is aborted."""
    rid = f"{job.id_prefix}-{uuid.uuid4().hex}"
    created = int(time.time())
    obj = "chat.completion.chunk" if job.chat else "text_completion"
    usage_field = {"usage": None} if job.include_usage else {}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": rid, "object": obj, "created": created, "model": job.model, "choices": choices}
        body.update(extra)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    channel: Channel | None = None
    try:
        try:
            channel = await engine.submit(job.prompt_ids, job.params)
        except (RequestError, EngineStopped) as exc:
            yield sse_error(400 if isinstance(exc, RequestError) else 503, str(exc))
            yield DONE
            return
        text_stream = OutputTextStream(tokenizer, job.params.stop)
        n_out, first = 0, True
        async for d in _deltas(engine, channel):
            if d.error is not None or d.finish_reason == "error":
                yield sse_error(500, d.error or "the request failed while sampling")
                yield DONE
                return
            n_out += len(d.token_ids)
            text = text_stream.push(d.token_ids)
            if d.finish_reason is not None:
                text += text_stream.finish()
            if not (text or first or d.finish_reason is not None):
                continue  # the step's tokens completed no character yet
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": d.finish_reason}
            if job.chat:
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                if text or first:
                    delta["content"] = text
                choice["delta"] = delta
            else:
                choice["text"] = text
                choice["stop_reason"] = None
            first = False
            yield chunk([choice], **usage_field)
        if job.include_usage:
            yield chunk([], usage=_usage(len(job.prompt_ids), n_out))
        yield DONE
    finally:
        if channel is not None:
            engine.abort(channel)  # a no-op once finished; at once when the client left
