"""Runs a RunSession in a worker thread and lets a UI steer it: pause / resume / step once /
delay between steps / restart / stop.

Two seams are named here. `RunControls` is steering a run between its steps and reading its state (pause,
resume, step once, delay, restart, stop; paused, finished, state, error): SessionController has them, the
server's engine thread (kvscope.serve.server.engine_loop.EngineLoop) has them for its /control route, and the
attach client (kvscope.serve.client.attach_client.RemoteController) has them over HTTP. `RunController` is
what the TUI holds: the controls, plus the run's events (`drain`) and its `session` (None while loading):
SessionController and RemoteController.

The engine never waits on the UI: its events go into an unbounded thread-safe queue
(`SimpleQueue.put` does not block) and the UI thread pulls them at its own refresh rate
with `drain(sink)`, applying them to whatever it renders from (an EngineView, Metrics, ...).
Those consumers therefore belong to the draining thread alone and need no lock.

The session is built inside the worker (loading a real model takes seconds), from a factory
that receives the controller's EventBus, so the RunInfo emitted at construction is seen too.
A disaggregated deployment's engines each have their own bus: their events reach the queue wrapped
in an EngineEvent that names the engine (the controller's own bus then carries only the proxy's).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from kvscope.events.bus import EventBus

if TYPE_CHECKING:
    from kvscope.engine.session import RunSession


def drain_queue(events: queue.Queue[Any] | queue.SimpleQueue[Any], sink: Callable[[Any], None],
                limit: int | None = None) -> int:
    """Hand the queued events, oldest first, to `sink` (at most `limit`); returns how many (a controller's
    drain: the in-process one and the one attached to a server)."""
    n = 0
    get = events.get_nowait
    while limit is None or n < limit:
        try:
            event = get()
        except queue.Empty:
            break
        sink(event)
        n += 1
    return n

@dataclass(slots=True, frozen=True)
class EngineEvent:
    """An event of one engine of a deployment, as the UI receives it: which engine, and the event."""

    kind: ClassVar[str] = "engine_event"
    engine: str
    event: Any  # None: the engine's announcement, before its first event


def tag_engine_events(session: RunSession, sink: Callable[[Any], None], own_bus: EventBus) -> None:
    """Subscribe `sink` to each engine bus of a deployment session (session.buses) that is not `own_bus`,
    every event wrapped in an EngineEvent, after an EngineEvent(name, None) per engine that announces it (so
    a consumer knows the deployment before any engine has stepped); a single-engine session is left alone."""
    for name, bus in session.buses.items():
        if bus is not own_bus:
            sink(EngineEvent(name, None))
            bus.subscribe(_tagged(name, sink))


def _tagged(name: str, sink: Callable[[Any], None]) -> Callable[[Any], None]:
    """A subscriber that hands `sink` each event wrapped in an EngineEvent of engine `name`."""

    def tag(event: Any) -> None:
        sink(EngineEvent(name, event))

    return tag


SessionFactory = Callable[[EventBus], "RunSession"]

# controller states, for the UI's status line
LOADING = "loading"
RUNNING = "running"
PAUSED = "paused"
FINISHED = "finished"
FAILED = "failed"
STOPPED = "stopped"


def run_state(*, failed: bool, stopped: bool, paused: bool, loaded: bool = True, finished: bool = False) -> str:
    """A controller's state from its flags, the first that holds: failed, stopped, loading, finished, paused."""
    if failed:
        return FAILED
    if stopped:
        return STOPPED
    if not loaded:
        return LOADING
    if finished:
        return FINISHED
    return PAUSED if paused else RUNNING


@runtime_checkable
class RunControls(Protocol):
    """Steering a run between its steps, and its state (module docstring). Safe from any thread."""

    delay_s: float  # the pause after each step
    error: BaseException | None  # what stopped the run, once it failed

    @property
    def paused(self) -> bool: ...

    @property
    def finished(self) -> bool:
        """The run's work is done (a server's never is)."""
        ...

    @property
    def state(self) -> str:
        """LOADING, RUNNING, PAUSED, FINISHED, FAILED or STOPPED, for a status line."""
        ...

    def start(self) -> RunControls: ...
    def stop(self, timeout: float = ...) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...

    def toggle_pause(self) -> bool:
        """Pause if running, resume if paused; the new paused flag."""
        ...

    def step_once(self) -> bool:
        """While paused, one more step; False (and nothing done) otherwise."""
        ...

    def set_delay(self, seconds: float) -> None: ...

    def restart(self) -> None:
        """The workload again from nothing, where the run has one of its own (a server's comes from its clients)."""
        ...


@runtime_checkable
class RunController(RunControls, Protocol):
    """What the TUI holds of a run (module docstring): the controls, its events and whether it has loaded."""

    session: Any  # the run once it has loaded (a RunSession, an attached server's URL); None before

    def drain(self, sink: Callable[[Any], None], limit: int | None = None) -> int:
        """Hand the queued events, oldest first, to `sink` on the calling thread; returns how many."""
        ...


class SessionController:
    """A RunController over a RunSession in a worker thread. Public methods are safe to call from any thread."""

    def __init__(self, session_factory: SessionFactory, *, start_paused: bool = False, delay_s: float = 0.0,
                 subscribers: tuple[Callable[[Any], None], ...] = ()) -> None:
        self.bus = EventBus()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self.bus.subscribe(self._events.put)
        for fn in subscribers:
            self.bus.subscribe(fn)
        self._factory = session_factory
        self._cond = threading.Condition()
        self._paused = start_paused
        self._pending_steps = 0
        self._restart = False
        self._stop = False
        self._idle = False
        self._finished = False
        self._loaded = False
        self.delay_s = max(0.0, delay_s)
        self.steps_run = 0
        self.error: BaseException | None = None
        self.session: RunSession | None = None
        self._thread = threading.Thread(target=self._run, name="kvscope-engine", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> SessionController:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to end after the step in progress and wait for it (up to `timeout`)."""
        with self._cond:
            self._stop = True
            self._poke()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- controls -----------------------------------------------------------------------------
    def pause(self) -> None:
        with self._cond:
            self._paused = True
            self._pending_steps = 0
            self._poke()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._poke()

    def toggle_pause(self) -> bool:
        """Pause if running, resume if paused; returns the new paused flag."""
        with self._cond:
            self._paused = not self._paused
            self._pending_steps = 0
            self._poke()
            return self._paused

    def step_once(self) -> bool:
        """While paused, run exactly one more scheduler step. False (and nothing done) when not paused or finished."""
        with self._cond:
            if not self._paused or self._finished or self.error is not None:
                return False
            self._pending_steps += 1
            self._poke()
            return True

    def restart(self) -> None:
        """Start the workload again on a fresh engine state (the session emits a new RunInfo)."""
        with self._cond:
            self._restart = True
            self._poke()

    def set_delay(self, seconds: float) -> None:
        with self._cond:
            self.delay_s = max(0.0, seconds)
            self._poke()

    # -- state --------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def state(self) -> str:
        return run_state(failed=self.error is not None, stopped=self._stop, paused=self._paused, loaded=self._loaded,
                         finished=self._finished)

    @property
    def idle(self) -> bool:
        """True while the worker waits for a command (paused with no step pending, finished, or failed)."""
        return self._idle

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the worker is idle (tests and scripts; never from the engine thread)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._idle or not self._thread.is_alive(), timeout)

    def drain(self, sink: Callable[[Any], None], limit: int | None = None) -> int:
        """Apply queued events, oldest first, to `sink` on the calling thread; returns how many."""
        return drain_queue(self._events, sink, limit)

    # -- worker -------------------------------------------------------------------------------
    def _has_work(self) -> bool:
        if self._stop or self._restart:
            return True
        if self._finished or self.error is not None or not self._loaded:
            return False
        return not self._paused or self._pending_steps > 0

    def _run(self) -> None:
        try:
            self.session = session = self._factory(self.bus)
            tag_engine_events(session, self._events.put, self.bus)
        except BaseException as exc:
            self._fail(exc)
            return
        with self._cond:
            self._loaded = True
            self._poke()
        while True:
            with self._cond:
                while not self._has_work():
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                self._idle = False
                if self._stop:
                    self._cond.notify_all()
                    return
                restart = self._restart
                self._restart = False
                if restart:
                    self._finished = False
                    self._pending_steps = 0
                elif self._paused:
                    self._pending_steps -= 1
            try:
                if restart:
                    session.reset()
                    continue
                more = session.step()
            except BaseException as exc:
                self._fail(exc)
                return
            self.steps_run += 1
            with self._cond:
                if not more:
                    self._finished = True
                if self.delay_s > 0 and not self._finished:
                    self._cond.wait_for(lambda: self._stop or self._restart or self._pending_steps > 0,
                                        timeout=self.delay_s)

    def _poke(self) -> None:
        # called with the lock held after a control changed: the worker is no longer idle if it now
        # has work, so wait_idle() called right after cannot return before that work is done
        if self._has_work():
            self._idle = False
        self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self.error = exc
            self._idle = True
            self._cond.notify_all()
