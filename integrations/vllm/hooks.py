"""The plugin's only contact with vLLM: Scheduler.schedule and Scheduler.update_from_output wrapped so that,
after each returns, a VllmTracker reads the scheduler's state (and, before an update, the model runner's
output, which vLLM trims in place at a stop). The wrapped methods return what vLLM's
return, untouched. If observing ever raises, the originals are put back, one line goes to vLLM's log, and
vLLM goes on as if the plugin had never been there."""

from __future__ import annotations

import logging
import time
from typing import Any
from weakref import WeakKeyDictionary

from kvscope.integrations.vllm.tracker import Sink, VllmTracker

log = logging.getLogger("vllm.kvscope")


class SchedulerHooks:
    """Wraps a Scheduler class's two methods; `uninstall()` (or the first error) restores them."""

    def __init__(self, scheduler_cls: type, sink: Sink, version: str) -> None:
        self.cls, self.sink, self.version = scheduler_cls, sink, version
        self.trackers: WeakKeyDictionary[Any, VllmTracker] = WeakKeyDictionary()
        self.originals = {name: getattr(scheduler_cls, name) for name in ("schedule", "update_from_output")}
        self.active = False
        self.error: str | None = None
        self.observe_ns = 0  # time spent observing, all calls together (what the plugin costs vLLM's engine thread)
        self.calls = 0

    def install(self) -> SchedulerHooks:
        schedule, update = self.originals["schedule"], self.originals["update_from_output"]
        hooks = self

        def wrapped_schedule(sched: Any, *args: Any, **kwargs: Any) -> Any:
            out = schedule(sched, *args, **kwargs)
            hooks.observe(sched, "after_schedule", out)
            return out

        def wrapped_update(sched: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            hooks.observe(sched, "before_update", scheduler_output, *args[:1])  # the model runner's output, as
            result = update(sched, scheduler_output, *args, **kwargs)              # vLLM gets it (it trims it)
            hooks.observe(sched, "after_update", scheduler_output)
            return result

        for name, fn, original in (("schedule", wrapped_schedule, schedule),
                                   ("update_from_output", wrapped_update, update)):
            fn.__wrapped__ = original  # type: ignore[attr-defined]
            setattr(self.cls, name, fn)
        self.active = True
        return self

    def observe(self, sched: Any, what: str, out: Any, *more: Any) -> None:
        if not self.active:
            return
        start = time.perf_counter_ns()
        try:
            tracker = self.trackers.get(sched)
            if tracker is None:
                tracker = self.trackers[sched] = VllmTracker(self.sink, self.version)
            getattr(tracker, what)(sched, out, *more)
            self.observe_ns += time.perf_counter_ns() - start
            self.calls += 1
        except Exception as e:  # never a risk to vLLM: stop observing, keep serving
            self.error = f"{type(e).__name__}: {e}"
            self.uninstall()
            log.warning("kvscope: plugin disabled (%s); vLLM goes on without it", self.error)

    def uninstall(self) -> None:
        for name, fn in self.originals.items():
            setattr(self.cls, name, fn)
        self.active = False
