"""The engine's own thread: the HTTP side never steps the engine, it sends commands.

Handlers on the event loop call `submit` (add a request) and `abort`; both only put a command on a queue
and wake the thread. Between steps the thread applies the commands (EngineClient.add_request / abort: one
LLMEngine, or a deployment's proxy), runs a step when there is work and, after it, pushes each live request's
new output tokens to that request's asyncio queue (`loop.call_soon_threadsafe`): the per-step output deltas,
taken by comparing each request's output length with what was already pushed. A finished request gets a last
delta with its finish reason and is forgotten by the engine (a server keeps no history). If the thread dies,
every open request gets the error and `alive` turns False (/health answers 503).

Controls for an attached viewer (pause / resume / step once / delay) act between steps, like the in-process
SessionController's: an EngineLoop is a RunControls (kvscope.inspector.live.controller). A server never
finishes and has no workload of its own to restart.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.request import RequestStatus
from kvscope.engine.core.request_check import Prompt
from kvscope.engine.engine_client import EngineClient
from kvscope.errors import RequestError
from kvscope.inspector.live.controller import run_state


class EngineStopped(RuntimeError):
    """The engine thread is gone: a request submitted now is never served."""


@dataclass(slots=True)
class Delta:
    """New output of one request since its last delta. finish_reason is set on the last one; error when the
    engine failed (the request is over)."""

    token_ids: list[int]
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    error: str | None = None


@dataclass(slots=True)
class Channel:
    """One request as the HTTP side holds it: the engine id once added, and the queue its deltas arrive on."""

    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue = field(default_factory=asyncio.Queue)
    request_id: int = -1
    sent: int = 0  # output tokens pushed so far (engine thread only)
    abandoned: bool = False
    done: bool = False

    def push(self, delta: Delta) -> None:
        """From the engine thread: hand a delta to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.deltas.put_nowait, delta)
        except RuntimeError:  # the loop is closed (server shutting down)
            pass


def _deliver(batch: list[tuple[Channel, Delta]]) -> None:
    """On the event loop: put each delta on its request's queue."""
    for channel, delta in batch:
        channel.deltas.put_nowait(delta)


def _set(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():  # the handler gave up waiting (its client left)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class EngineLoop:
    """Owns the engine thread. `submit`/`abort` are for the event loop; the rest is safe from any thread."""

    def __init__(self, engine: EngineClient, idle_wait_s: float = 0.05) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._channels: dict[int, Channel] = {}
        self._idle_wait_s = idle_wait_s
        self._stop = False
        self.error: BaseException | None = None
        self._submitted = 0  # adds put on the queue (event loop thread only)
        self._taken = 0  # adds the engine thread took off it (engine thread only)
        self.num_waiting = 0
        self.num_running = 0
        self.steps_run = 0
        # controls for an attached viewer
        self._cond = threading.Condition()
        self.paused = False
        self._pending_steps = 0
        self.delay_s = 0.0
        self._thread = threading.Thread(target=self._run, name="kvscope-serve-engine", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def pending_adds(self) -> int:
        """Requests submitted and not yet taken in by the engine (they count as waiting)."""
        return self._submitted - self._taken

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    @property
    def finished(self) -> bool:
        """A server never finishes: its requests keep coming."""
        return False

    @property
    def state(self) -> str:
        return run_state(failed=self.error is not None, stopped=self._stop, paused=self.paused)

    # --- from the event loop -------------------------------------------------------------------
    async def submit(self, prompt: Prompt, params: SamplingParams) -> Channel:
        """Queue a request; returns its channel once the engine took it (RequestError if it refused it).
        Cancelled while waiting (its client left), the request is aborted as soon as it is in."""
        if not self.alive:
            raise EngineStopped("the engine is not running")
        loop = asyncio.get_running_loop()
        channel = Channel(loop)
        fut = loop.create_future()
        self._submitted += 1
        self._put(("add", channel, prompt, params, fut))
        try:
            await fut
        except asyncio.CancelledError:
            self.abort(channel)
            raise
        return channel

    def abort(self, channel: Channel) -> None:
        """End the channel's request (its client left); a no-op for a finished one."""
        if not channel.done:
            channel.abandoned = True
            self._put(("abort", channel))

    def _put(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

    # --- controls (any thread) -----------------------------------------------------------------
    def pause(self) -> None:
        with self._cond:
            self.paused = True
            self._pending_steps = 0
            self._cond.notify_all()
        self._wake.set()

    def resume(self) -> None:
        with self._cond:
            self.paused = False
            self._cond.notify_all()
        self._wake.set()

    def toggle_pause(self) -> bool:
        """Pause if running, resume if paused; returns the new paused flag."""
        with self._cond:
            self.paused = paused = not self.paused
            self._pending_steps = 0
            self._cond.notify_all()
        self._wake.set()
        return paused

    def restart(self) -> None:
        """A server's workload comes from its clients: nothing to restart."""

    def step_once(self) -> bool:
        with self._cond:
            if not self.paused:
                return False
            self._pending_steps += 1
            self._cond.notify_all()
        self._wake.set()
        return True

    def set_delay(self, seconds: float) -> None:
        with self._cond:
            self.delay_s = max(0.0, float(seconds))
            self._cond.notify_all()

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop:
                self._apply_commands()
                if engine.has_unfinished() and self._may_step():
                    engine.step()
                    self.steps_run += 1
                    self._push_deltas()
                    self._after_step()
                else:
                    self._wake.wait(self._idle_wait_s)
                    self._wake.clear()
        except BaseException as exc:  # the engine failed: every open request hears of it
            self.error = exc
            message = f"the engine stopped: {type(exc).__name__}: {exc}"
            for ch in list(self._channels.values()):
                ch.done = True
                ch.push(Delta([], "error", error=message))
            self._channels.clear()
            self._fail_pending(message)

    def _may_step(self) -> bool:
        with self._cond:
            if not self.paused:
                return True
            if self._pending_steps > 0:
                self._pending_steps -= 1
                return True
            return False

    def _after_step(self) -> None:
        if self.delay_s > 0:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._pending_steps > 0 or self.delay_s == 0,
                                    timeout=self.delay_s)

    def _apply_commands(self) -> None:
        engine = self.engine
        aborted = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command[0] == "add":
                _, channel, prompt, params, fut = command
                self._taken += 1
                if channel.abandoned:
                    channel.done = True
                    continue
                try:
                    rid = engine.add_request(prompt, params)
                except RequestError as exc:
                    channel.done = True
                    channel.loop.call_soon_threadsafe(_set, fut, None, exc)
                    continue
                channel.request_id = rid
                self._channels[rid] = channel
                channel.loop.call_soon_threadsafe(_set, fut, rid)
            else:
                channel = command[1]
                if channel.request_id >= 0 and not channel.done:
                    aborted |= engine.abort(channel.request_id)
        if aborted:
            self._push_deltas()
        self._count()

    def _count(self) -> None:
        self.num_waiting, self.num_running = self.engine.queue_depths()

    def _push_deltas(self) -> None:
        """Each open request's new tokens since the last push, handed to the event loops in one call per loop
        (a wake-up of the loop costs a write to its self-pipe: one per step, not one per request)."""
        requests = self.engine.requests
        finished: list[int] = []
        batches: dict[asyncio.AbstractEventLoop, list[tuple[Channel, Delta]]] = {}
        for rid, ch in self._channels.items():
            req = requests[rid]
            n = req.num_output_tokens
            done = req.status is RequestStatus.FINISHED
            if n > ch.sent or done:
                new = req.token_ids[req.num_prompt_tokens + ch.sent:]
                ch.sent = n
                delta = Delta(new, req.finish_reason if done else None, req.num_prompt_tokens,
                              req.num_cached_tokens)
                batches.setdefault(ch.loop, []).append((ch, delta))
            if done:
                ch.done = True
                finished.append(rid)
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop is closed (server shutting down)
                pass
        for rid in finished:
            del self._channels[rid]
            self.engine.forget(rid)
        self._count()

    def _fail_pending(self, message: str) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                channel, fut = command[1], command[4]
                channel.done = True
                channel.loop.call_soon_threadsafe(_set, fut, None, EngineStopped(message))

    # --- for tests and the snapshot -------------------------------------------------------------
    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until no request is open (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._channels and self.pending_adds == 0 and not self.engine.has_unfinished():
                return True
            time.sleep(0.01)
        return False

    @property
    def num_open(self) -> int:
        return len(self._channels)
