"""The header every client sends to a server started with --api-key: vLLM's `Authorization: Bearer KEY`."""

from __future__ import annotations


def auth_headers(api_key: str | None) -> dict[str, str]:
    """{"Authorization": "Bearer KEY"}, or no header without a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
