"""Progress bars for long work on the command line: loading a model, running a workload (headless runs,
`kvscope trace`, each variant of `kvscope bench`).

A bar shows requests done / total, generated tokens per second and the time left, on standard error, and
only when standard error is a terminal: piped or redirected output gets nothing extra. A run's bar follows
the run's events (RunTracker is a bus subscriber), so it knows nothing of the engine: any session that
emits kvscope events (the simulator's too) drives it the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from kvscope.cli.console import is_terminal
from kvscope.events.records import RequestEvent, RunInfo, StepEnd
from kvscope.events.vocabulary import FINISHED
from kvscope.inspector.event_fold import EventFold

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from kvscope.events.bus import EventBus


class ProgressBars:
    """A context for the bars of one command; `enabled` None: when standard error is a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = is_terminal(sys.stderr)
        self.enabled = enabled
        self._progress: Progress | None = None

    def __enter__(self) -> ProgressBars:
        if self.enabled:
            self._progress = _make_progress()
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def loading(self, what: str) -> Iterator[None]:
        """A bar without an end while `what` loads (the loaders report no progress of their own); it shows
        the time it took once done."""
        progress = self._progress
        if progress is None:
            yield
            return
        task = progress.add_task(f"loading {what}", total=None, detail="")
        try:
            yield
        finally:
            progress.update(task, total=1, completed=1)

    def track_run(self, bus: EventBus, description: str, total_requests: int) -> RunTracker | None:
        """A bar for a run of `total_requests` requests, fed by `bus` (None when bars are off)."""
        if self._progress is None:
            return None
        return bus.subscribe(RunTracker(self._progress, description, total_requests))


class RunTracker(EventFold):
    """Moves one bar along with a run: a request is done when it finishes; tokens/s is the generated tokens
    over the time since the first step began."""

    def __init__(self, progress: Progress, description: str, total_requests: int) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task(description, total=max(total_requests, 1), detail="")
        self.total = total_requests
        self.done = 0
        self.tokens = 0
        self.started = 0.0

    def on_run_info(self, ev: RunInfo) -> None:
        self.done = self.tokens = 0
        self.started = 0.0

    def on_request(self, ev: RequestEvent) -> None:
        if ev.what == FINISHED:
            self.done += 1

    def on_step_end(self, ev: StepEnd) -> None:
        now = time.perf_counter()
        if not self.started:
            self.started = now - max(ev.ts - ev.begin_ts, 1) / 1e9
        for _, n in ev.sampled:
            self.tokens += n
        rate = self.tokens / (now - self.started) if now > self.started else 0.0
        self.progress.update(self.task, completed=self.done,
                             detail=f"{self.done}/{self.total} requests  {rate:7.1f} tok/s")


def _make_progress() -> Progress:
    from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
    from rich.text import Text

    from kvscope.cli.console import stderr_console

    class TimeColumn(ProgressColumn):
        """'ETA 0:12' while a bar runs, 'took 0:03' once it is done, the time so far for a bar without an end."""

        def render(self, task: Task) -> Text:
            if task.finished:
                return Text(f"took {_clock(task.finished_time)}", style="dim")
            if task.total is None:
                return Text(_clock(task.elapsed), style="dim")
            left = task.time_remaining
            return Text(f"ETA {_clock(left) if left is not None else '-:--'}", style="cyan")

    return Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.fields[detail]}"), TimeColumn(), console=stderr_console(),
                    refresh_per_second=5, transient=False)


def _clock(seconds: float | None) -> str:
    minutes, secs = divmod(int(seconds or 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
