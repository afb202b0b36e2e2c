"""What a well-formed event stream looks like, checked event by event (`kvscope replay --strict`).

Within a run (from one RunInfo to the next): step numbers never go back; each step begins once,
after the previous one ended, and ends before the next begins; a request arrives once, before any
other event of it, and finishes at most once, with nothing of it after. A recording written twice
over itself (two threads flushing one buffer), cut and spliced, or reordered breaks one of these.
Pure python.
"""

from __future__ import annotations

from typing import Any

from kvscope.events.vocabulary import ARRIVED, FINISHED, Kind


class StreamCheck:
    """Feed it events in order; `problem(event)` says what is wrong with the next one (None: nothing)."""

    __slots__ = ("_arrived", "_finished", "_last_step", "_open_step", "_run_started")

    def __init__(self) -> None:
        self._run_started = False
        self._reset()

    def _reset(self) -> None:
        self._last_step = -1 << 62
        self._open_step: int | None = None
        self._arrived: set[int] = set()
        self._finished: set[int] = set()

    def problem(self, event: Any) -> str | None:
        kind = event.kind
        if kind == Kind.RUN_INFO:
            self._run_started = True
            self._reset()
            self._last_step = event.step
            return None
        if not self._run_started:
            return f"{kind} event before the run's run_info"
        if event.step < self._last_step:
            return f"{kind} event of step {event.step} after step {self._last_step} (out of order)"
        self._last_step = event.step
        if kind == Kind.STEP_BEGIN:
            if self._open_step is not None:
                return f"step {event.step} begins before step {self._open_step} ended"
            self._open_step = event.step
        elif kind == Kind.STEP_END:
            if self._open_step != event.step:
                return f"step {event.step} ends but it did not begin (or ended already)"
            self._open_step = None
        elif kind == Kind.REQUEST:
            return self._request_problem(event)
        return None

    def _request_problem(self, event: Any) -> str | None:
        rid = event.request_id
        if event.what == ARRIVED:
            if rid in self._arrived:
                return f"request {rid} arrives a second time (duplicated events?)"
            self._arrived.add(rid)
            return None
        if rid not in self._arrived:
            return f"request {rid} is {event.what} before it arrived"
        if rid in self._finished:
            return f"request {rid} is {event.what} after it finished"
        if event.what == FINISHED:
            self._finished.add(rid)
        return None
