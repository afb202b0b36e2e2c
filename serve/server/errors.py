"""HTTP errors in vLLM's shape: `{"error": {"message", "type", "param", "code"}}` with the status as `code`.

A 413 (a body over --max-request-body-bytes) is typed as vLLM types an HTTP-level refusal (its HTTPException
handler): by the status's phrase.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

_TYPES = {400: "BadRequestError", 404: "NotFoundError", 413: HTTPStatus(413).phrase, 500: "InternalServerError",
          503: "ServiceUnavailableError"}


class ServeError(Exception):
    """A request answered with an error: status, one-line message, the offending field (`param`) if any."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "BadRequestError"), "param": param,
                      "code": status}}


def bad_request(message: str, param: str | None = None) -> ServeError:
    return ServeError(400, message, param)


def sse_error(status: int, message: str) -> str:
    """An error after streaming began: one SSE data record (the stream then ends with [DONE])."""
    return f"data: {json.dumps(error_body(status, message))}\n\n"
