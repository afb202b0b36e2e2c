"""The FastAPI app: vLLM's OpenAI-compatible endpoints on an EngineLoop, /metrics, and the attach endpoints.

POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health (503 once the engine thread
died), GET /version, POST /tokenize, POST /detokenize, GET /metrics; GET /kvscope/v1/events,
GET /kvscope/v1/snapshot, POST /kvscope/v1/control (kvscope.serve.server.attach_routes).

Bodies are read and checked here (kvscope.serve.server.protocol), so every bad input is a 400 in vLLM's error
shape naming the field, before the engine sees anything; an unknown model is a 404; a full queue
(`max_waiting`) a 503 with Retry-After. No client can stall the others: a body over `max_body_bytes` is a 413
before it is kept (kvscope.serve.server.body), and parsing, the chat template and tokenizing run in worker
threads (kvscope.serve.server.offload), never on the event loop. With API keys set, every path but /health,
/version and /metrics needs one (kvscope.serve.server.auth). A client that leaves (streaming or not, queued or
running) has its request aborted at once: a stream is cancelled by Starlette on disconnect, a plain request
races a disconnect listener (vLLM's with_cancellation).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.request_check import PromptTooLong
from kvscope.errors import RequestError
from kvscope.serve.server.attach_routes import add_attach_routes
from kvscope.serve.server.auth import ApiKeyMiddleware
from kvscope.serve.server.body import DEFAULT_MAX_REQUEST_BODY_BYTES, parse_json_object, read_body
from kvscope.serve.server.engine_loop import EngineLoop
from kvscope.serve.server.errors import ServeError, bad_request, error_body
from kvscope.serve.server.event_hub import EventHub
from kvscope.serve.server.metrics import CONTENT_TYPE, ServeMetrics
from kvscope.serve.server.offload import Offload
from kvscope.serve.server.protocol import ChatCompletionRequest, CompletionRequest, parse_body, to_engine
from kvscope.serve.server.responses import Job, complete, stream
from kvscope.version import __version__


@dataclass(slots=True)
class ServerState:
    """What the handlers share: the engine thread, the served model's name, metrics, events, limits."""

    engine: EngineLoop
    model_name: str
    metrics: ServeMetrics
    hub: EventHub
    defaults: SamplingParams
    max_waiting: int | None = None
    created: int = 0
    watched: Any = None  # the LLMEngine an attached viewer sees (None: a deployment's engines are elsewhere)
    api_keys: tuple[str, ...] = ()  # none: no key needed
    max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    offload: Offload = field(default_factory=Offload)


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="kvscope", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.kvscope = state
    if state.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=state.api_keys)
    engine = state.engine.engine
    tokenizer = engine.tokenizer
    max_len = engine.max_model_len

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(500, f"{type(exc).__name__}: {exc}"[:500]), status_code=500)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)  # the client left while sending its body: nobody to answer

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, str(exc)[:500]), status_code=400)

    def check_model(name: str | None) -> None:
        if name is not None and name != state.model_name:
            raise ServeError(404, f"The model `{name}` does not exist.", "model")

    def check_capacity() -> None:
        if state.max_waiting is not None and (state.engine.num_waiting + state.engine.pending_adds
                                              >= state.max_waiting):
            state.metrics.record_admission_rejection()
            raise ServeError(503, f"the server's queue is full ({state.max_waiting} requests waiting); retry later",
                             headers={"Retry-After": "1"})
        if not state.engine.alive:
            raise ServeError(503, "the engine is not running")

    def too_long(n: int | str, param: str) -> ServeError:
        return bad_request(f"This model's maximum context length is {max_len} tokens. However, your request has "
                           f"{n} input tokens. Please reduce the length of the input.", param)

    def prepare(body: bytes, cls: type, chat: bool) -> tuple[Job, bool]:
        """Parse, tokenize and check a generation request (in a worker thread: its cost grows with the body)."""
        req = parse_body(body, cls)
        parsed = to_engine(req, state.defaults)
        check_model(parsed.model)
        param = "messages" if chat else "prompt"
        try:
            ids = engine.encode_prompt(parsed.prompt, limit=max_len)
        except PromptTooLong as exc:  # refused before tokenizing: it can only be longer than this bound
            raise too_long(exc.num_tokens if exc.exact else f"at least {exc.num_tokens}", param) from None
        except RequestError as exc:
            raise bad_request(str(exc), param) from None
        n = len(ids)
        if n == 0:
            raise bad_request("empty prompt", param)
        if n >= max_len:
            del ids  # the error's traceback keeps this frame: not the token ids with it
            raise too_long(n, param)
        if parsed.max_tokens_given and n + parsed.params.max_tokens > max_len:
            raise bad_request(f"This model's maximum context length is {max_len} tokens. However, you requested "
                              f"{n + parsed.params.max_tokens} tokens ({n} in the input, "
                              f"{parsed.params.max_tokens} in the completion). Please reduce the length of the "
                              f"input or completion.", "max_completion_tokens" if chat else "max_tokens")
        try:
            engine.check_fits(n, parsed.params.max_tokens)
        except RequestError as exc:
            raise bad_request(str(exc)) from None
        return Job(chat, state.model_name, ids, parsed.params, parsed.include_usage), parsed.stream

    async def body_of(request: Request) -> bytes:
        return await read_body(request, state.max_body_bytes)

    async def generate(request: Request, cls: type, chat: bool) -> Response:
        raw = await body_of(request)
        job, streaming = await state.offload.run(len(raw), prepare, raw, cls, chat)
        check_capacity()
        if streaming:
            return StreamingResponse(stream(state.engine, tokenizer, job), media_type="text/event-stream")
        return await _unless_disconnected(request, complete(state.engine, tokenizer, job))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, CompletionRequest, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, ChatCompletionRequest, chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": state.created, "owned_by": "kvscope",
            "root": state.model_name, "parent": None, "max_model_len": max_len, "permission": []}]}

    @app.get("/health")
    async def health() -> Response:
        if not state.engine.alive:
            return JSONResponse(error_body(503, "the engine thread has stopped"), status_code=503)
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    def tokenize_body(raw: bytes) -> dict[str, Any]:
        data = parse_json_object(raw)
        check_model(data.get("model"))
        if "messages" in data:
            prompt: Any = data["messages"]
        elif "prompt" in data:
            prompt = data["prompt"]
            if not isinstance(prompt, str):
                raise bad_request("prompt: expected a string", "prompt")
        else:
            raise bad_request("prompt: a `prompt` or `messages` field is needed", "prompt")
        add_special = data.get("add_special_tokens", True)
        try:
            if isinstance(prompt, str):
                ids = tokenizer.encode(prompt, add_bos=None if add_special else False)
            else:
                ids = engine.encode_prompt(prompt)
        except RequestError as exc:
            raise bad_request(str(exc)) from None
        return {"count": len(ids), "max_model_len": max_len, "tokens": ids, "token_strs": None}

    def detokenize_body(raw: bytes) -> dict[str, Any]:
        data = parse_json_object(raw)
        check_model(data.get("model"))
        tokens = data.get("tokens")
        vocab = engine.config.vocab_size
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise bad_request("tokens: expected a list of token ids", "tokens")
        bad = next((t for t in tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"tokens: token id {bad} outside the vocabulary (0..{vocab - 1})", "tokens")
        return {"prompt": tokenizer.decode(tokens)}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        raw = await body_of(request)
        return await state.offload.run(len(raw), tokenize_body, raw)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        raw = await body_of(request)
        return await state.offload.run(len(raw), detokenize_body, raw)

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.set_queue(state.engine.num_running, state.engine.num_waiting + state.engine.pending_adds)
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)

    add_attach_routes(app, state)
    return app


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Any) -> Response:
    """Run `work` (a response body coroutine) unless the client leaves first: then cancel it (its request is
    aborted) and answer nobody."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_wait_disconnect(request))
    done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        gone.cancel()
        return JSONResponse(task.result())
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    return Response(status_code=499)
