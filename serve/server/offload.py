"""Work a handler must not do on the event loop: parsing a body, tokenizing a prompt, rendering a chat template.

Every such step is linear in what a client sent, so it runs in a worker thread while the loop goes on answering
/health and streaming tokens. Two lanes keep a client's huge body from delaying everybody's small ones: bodies
up to HEAVY_BYTES go to the light lane (several workers), bigger ones to the heavy lane (HEAVY_WORKERS), where
they wait only for each other. The tokenizer gives the interpreter up while it encodes (kvscope.engine.model
.tokenizer), so a long prompt costs a core, not the server.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

HEAVY_BYTES = 64 * 1024
LIGHT_WORKERS = 4
HEAVY_WORKERS = 2


class Offload:
    """Two thread pools, the light and the heavy lane; `await offload.run(size, fn, *args)`."""

    def __init__(self, light_workers: int = LIGHT_WORKERS, heavy_workers: int = HEAVY_WORKERS,
                 heavy_bytes: int = HEAVY_BYTES) -> None:
        self.heavy_bytes = heavy_bytes
        self._light = ThreadPoolExecutor(light_workers, thread_name_prefix="kvscope-serve-light")
        self._heavy = ThreadPoolExecutor(heavy_workers, thread_name_prefix="kvscope-serve-heavy")

    def lane(self, size: int) -> ThreadPoolExecutor:
        return self._heavy if size > self.heavy_bytes else self._light

    async def run(self, size: int, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) in the lane for a body of `size` bytes; its exception is raised here."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.lane(size), functools.partial(fn, *args))

    def close(self) -> None:
        """Stop taking work; what is queued is dropped, what runs finishes on its own."""
        self._light.shutdown(wait=False, cancel_futures=True)
        self._heavy.shutdown(wait=False, cancel_futures=True)
