"""`--api-key` as vLLM reads it: with one or more keys set, a request needs `Authorization: Bearer KEY`.

The guard is vLLM's (its authentication middleware): an HTTP request without a known key gets a 401 with the
body `{"error": "Unauthorized"}` (a websocket is closed at its handshake); CORS preflights (OPTIONS) pass, and
so do the probes vLLM leaves open (PUBLIC_PATHS: /health, /version, /metrics). Every other path needs the key,
as in vLLM's current middleware, which guards every registered route but the public ones: /v1/* and, here, the
attach endpoints under /kvscope/v1/* (watching the event stream, pausing or stepping the engine) and /tokenize,
/detokenize. Keys are compared by their SHA-256 digests with hmac.compare_digest, every key each time, so the
time taken says nothing about a key. The flag wins over the VLLM_API_KEY environment variable (vLLM's order).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS = frozenset({"/health", "/version", "/metrics"})
ENV_VAR = "VLLM_API_KEY"
UNAUTHORIZED = {"error": "Unauthorized"}  # vLLM's body, status 401


def resolve_api_keys(flag: Sequence[str] | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """The keys a server requires: those given with --api-key, else VLLM_API_KEY's (none when both are empty)."""
    if flag:
        return tuple(flag)
    value = env.get(ENV_VAR, "")
    return (value,) if value else ()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def bearer_token(headers: Headers) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header (scheme case-insensitive), else None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token if scheme.lower() == "bearer" else None


class ApiKeyMiddleware:
    """ASGI middleware: requests outside PUBLIC_PATHS need one of `keys` as a Bearer token (module docstring)."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._digests = tuple(_digest(k) for k in keys)
        if not self._digests:
            raise ValueError("ApiKeyMiddleware needs at least one key")

    def allows(self, headers: Headers) -> bool:
        token = bearer_token(headers)
        if token is None:
            return False
        offered = _digest(token)
        match = False
        for digest in self._digests:  # no early exit: the time does not depend on which key matched
            match |= hmac.compare_digest(offered, digest)
        return match

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS"
                or scope["path"] in PUBLIC_PATHS or self.allows(Headers(scope=scope))):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # refused at the handshake (policy violation)
            await send({"type": "websocket.close", "code": 1008})
            return
        await JSONResponse(UNAUTHORIZED, status_code=401)(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on this machine only: `localhost` or a loopback address."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, keys: Sequence[str]) -> str | None:
    """The one-line warning for a server reachable from other machines with no key; None when it is not."""
    if keys or is_loopback(host):
        return None
    return (f"kvscope serve: warning: listening on {host or 'every interface'}:{port} without --api-key: anyone "
            f"who can reach it can send requests and pause, step or watch the engine (/kvscope/v1/*)")
