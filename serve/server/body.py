"""Reading a request body as an untrusted client sends it: a size cap before anything is kept, then JSON with a
nesting limit.

read_body streams the body and keeps at most `limit` bytes: a body over it (declared by Content-Length or found
while reading) is a 413 in vLLM's error shape. The rest of an oversized body is read and dropped, up to
DRAIN_BYTES more, so that a client still writing receives the 413 instead of a reset connection; past that the
connection is closed. parse_json refuses malformed JSON and nesting deeper than MAX_JSON_DEPTH with a 400
naming the problem, never a RecursionError (a 500), and it runs in a worker thread (kvscope.serve.server.offload)
like every other step that is linear in the body's size.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from kvscope.serve.server.errors import ServeError, bad_request

DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024  # 4 MiB: ~1M tokens of text, far beyond any context served here
MAX_JSON_DEPTH = 64  # a chat body nests 5 levels deep (body, messages, message, content parts, part)
DRAIN_BYTES = 64 * 1024 * 1024


def too_large(limit: int, close: bool = False) -> ServeError:
    """The 413; `close`: the rest of the body is not read, so the connection ends with the answer."""
    return ServeError(413, f"the request body is larger than the server's limit of {limit} bytes "
                           f"(--max-request-body-bytes)", headers={"Connection": "close"} if close else None)


def declared_length(request: Request) -> int | None:
    """The Content-Length header as a number (None when absent or not a number)."""
    raw = request.headers.get("content-length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body if it has at most `limit` bytes; ServeError(413) otherwise (after dropping the rest)."""
    declared = declared_length(request)
    if declared is not None and declared > limit + DRAIN_BYTES:
        raise too_large(limit, close=True)
    over = declared is not None and declared > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if not over and size > limit:
            over = True
            chunks.clear()
        if over:
            if size > limit + DRAIN_BYTES:
                raise too_large(limit, close=True)
            continue
        chunks.append(chunk)
    if over:
        raise too_large(limit)
    return b"".join(chunks)


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` (parsed JSON) holds arrays or objects nested more than `limit` deep (a scalar: depth 0,
    a flat array or object: 1). Iterative, so no depth can overflow the stack."""
    if not isinstance(value, (list, dict)):
        return False
    if limit < 1:
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (list, dict)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON document in `raw`; ServeError(400) when it is malformed or nested more than max_depth deep."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise bad_request(f"the JSON body nests deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise bad_request(f"malformed JSON body: {exc}") from None
    if nesting_exceeds(data, max_depth):
        raise bad_request(f"the JSON body nests deeper than {max_depth} levels")
    return data


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """parse_json, then a JSON object is required (400 otherwise)."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
    return data
