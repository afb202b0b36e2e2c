"""Replaying a JSONL event recording (kvscope.inspector.export.recording): cut it into steps and move a cursor
step by step, forward or back, rebuilding the consumers' state (EngineView, Metrics, ...)
as of the end of any step.

Positions: 0 is "before the first step" (the RunInfo and arrivals); k (1..num_steps) is
"through the end of the k-th StepEnd in the file" (plus any events up to the next StepBegin).
Going back restores the nearest checkpoint (a deep copy taken every CHECKPOINT_EVERY
positions on the way forward) and re-applies events from there. Pure python, no torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from kvscope.events.vocabulary import Kind
from kvscope.inspector.export.recording import RecordingError, read_recording

CHECKPOINT_EVERY = 64

SinkT = TypeVar("SinkT", bound=Callable[[Any], None])  # what a ReplayCursor feeds (a UIModel, an EngineView)


@dataclass(slots=True)
class Timeline:
    """A recording's events cut into step positions. `damage` says where reading stopped early ('' if it did not)."""

    path: str
    events: list[Any]
    cuts: list[int]       # cuts[k] = number of events applied at position k
    steps: list[int]      # steps[k - 1] = the StepEnd.step of position k
    damage: str = ""

    @property
    def num_positions(self) -> int:
        return len(self.cuts)

    @classmethod
    def from_events(cls, events: list[Any], path: str = "<events>", damage: str = "") -> Timeline:
        begins = [i for i, e in enumerate(events) if e.kind == Kind.STEP_BEGIN]
        ends = [e.step for e in events if e.kind == Kind.STEP_END]
        # a step that began but has no StepEnd (truncated file) is not a position of its own
        cuts = [begins[0] if begins else len(events)]
        for k in range(len(ends)):
            cuts.append(begins[k + 1] if k + 1 < len(begins) else len(events))
        return cls(path, events, cuts, ends, damage)


def load_timeline(path: str | Path, strict: bool = False) -> Timeline:
    """Read a recording (kvscope.inspector.export.recording) for replay. strict: the first damaged line is an
    error; otherwise the replay ends before it and `damage` names it. Raises RecordingError."""
    rec = read_recording(path, strict=strict)
    damage = rec.damage or ""
    if not rec.events:
        raise RecordingError(f"{path}: no events to replay" + (f" ({damage})" if damage else ""))
    if rec.events[0].kind != Kind.RUN_INFO:
        raise RecordingError(f"{path}:2: a recording must start with a run_info event, found {rec.events[0].kind!r}")
    return Timeline.from_events(rec.events, str(path), damage)


class ReplayCursor(Generic[SinkT]):
    """Feeds a recording's events into a consumer built by `make_sink` and moves it to any position."""

    def __init__(self, timeline: Timeline, make_sink: Callable[[], SinkT]) -> None:
        self.timeline = timeline
        self._make_sink = make_sink
        self.sink = make_sink()
        self.position = 0
        self._applied = 0
        self._checkpoints: dict[int, SinkT] = {}
        self._advance_to(0)

    @property
    def last_position(self) -> int:
        return self.timeline.num_positions - 1

    @property
    def step(self) -> int:
        """The engine step number at the cursor (-1 before the first step)."""
        return self.timeline.steps[self.position - 1] if self.position > 0 else -1

    def goto(self, position: int) -> None:
        position = min(max(position, 0), self.last_position)
        if position < self.position:
            base = max((k for k in self._checkpoints if k <= position), default=None)
            if base is None:
                self.sink = self._make_sink()
                self.position = 0
                self._applied = 0
            else:
                self.sink = copy.deepcopy(self._checkpoints[base])
                self.position = base
                self._applied = self.timeline.cuts[base]
        self._advance_to(position)

    def forward(self, n: int = 1) -> None:
        self.goto(self.position + n)

    def back(self, n: int = 1) -> None:
        self.goto(self.position - n)

    def goto_step(self, step: int) -> None:
        """The first position whose StepEnd.step is `step`, or the first after it; the end if none."""
        for k, s in enumerate(self.timeline.steps, 1):
            if s >= step:
                self.goto(k)
                return
        self.goto(self.last_position)

    def _advance_to(self, position: int) -> None:
        events, cuts = self.timeline.events, self.timeline.cuts
        sink = self.sink
        while True:
            target = cuts[self.position]
            while self._applied < target:
                sink(events[self._applied])
                self._applied += 1
            if self.position % CHECKPOINT_EVERY == 0 and self.position not in self._checkpoints and self.position:
                self._checkpoints[self.position] = copy.deepcopy(sink)
            if self.position >= position:
                return
            self.position += 1

