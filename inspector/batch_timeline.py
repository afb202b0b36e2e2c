"""The batch timeline: what each request did in each scheduler step, folded from the event stream.

Rows are requests, columns are steps; a cell says whether the request was waiting, computed a prefill
chunk (and how many tokens), decoded, was preempted, or finished in that step. It is the picture of
continuous batching: under the static policy a batch's seats stay empty until its longest request ends;
under continuous batching a finished request's seat is refilled at the next step. The TUI draws it live
and in replay (kvscope.tui.widgets.batch_timeline); `kvscope bench --chart` draws each variant's whole run.

Per request a Lane keeps its arrival and finish steps and the steps it did something in (a mark: what,
and tokens for a prefill chunk), append-only; "waiting" is every other step between arrival and finish
(after a preemption, until the request runs again, it waits preempted). So a step costs one mark per
request in its batch, not one per live request. Pure python.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from kvscope.events.records import RequestEvent, RunInfo, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, PREEMPTED
from kvscope.inspector.event_fold import EventFold

# what a cell shows (Cell.kind)
ABSENT = 0       # not arrived yet, or finished before this step
WAITING = 1      # arrived, in no batch
PREFILL = 2      # computed a prefill chunk (Cell.tokens: its size)
DECODE = 3       # computed a decode token
PREEMPTED_AT = 4  # lost its blocks in this step's scheduling (recompute later)
REQUEUED = 5     # waiting again after a preemption
FINISHED_AT = 6  # finished in this step without computing anything (aborted)
KIND_NAMES = ("absent", "waiting", "prefill", "decode", "preempted", "requeued", "finished")

# a mark packs kind, a finished flag and the token count into one int: kind | FINISH_FLAG | tokens << 4
FINISH_FLAG = 8
_TOKEN_SHIFT = 4

KEEP_STEPS = 2048  # the TUI's fold forgets requests that finished longer ago than this


def mark(kind: int, tokens: int = 0, finished: bool = False) -> int:
    return kind | (FINISH_FLAG if finished else 0) | (tokens << _TOKEN_SHIFT)


def mark_kind(code: int) -> int:
    return code & 7


def mark_tokens(code: int) -> int:
    return code >> _TOKEN_SHIFT


def mark_finished(code: int) -> bool:
    return bool(code & FINISH_FLAG)


@dataclass(slots=True)
class Lane:
    """One request's row: arrival and finish steps, and the steps it did something in."""

    request_id: int
    arrived: int
    finished: int | None = None
    steps: list[int] = field(default_factory=list)   # ascending
    marks: list[int] = field(default_factory=list)   # mark(...) per entry of steps

    def overlaps(self, first: int, last: int) -> bool:
        return self.arrived <= last and (self.finished is None or self.finished >= first)

    def cells(self, first: int, last: int) -> list[int]:
        """One code per step first..last: a mark where the request did something, else ABSENT / WAITING /
        REQUEUED (as a mark with no tokens)."""
        out: list[int] = []
        steps, marks = self.steps, self.marks
        i = bisect_left(steps, first)
        state = WAITING
        if i and mark_kind(marks[i - 1]) in (PREEMPTED_AT, REQUEUED):
            state = REQUEUED
        end = self.finished
        for step in range(first, last + 1):
            if i < len(steps) and steps[i] == step:
                code = marks[i]
                i += 1
                kind = mark_kind(code)
                state = REQUEUED if kind == PREEMPTED_AT else WAITING
                out.append(code)
            elif step < self.arrived or (end is not None and step > end):
                out.append(ABSENT)
            else:
                out.append(state)
        return out


class BatchTimeline(EventFold):
    """Lanes per request and the range of steps seen. `keep_steps` None keeps every request (a bench chart);
    otherwise requests that finished more than `keep_steps` steps ago are forgotten now and then.
    `version` changes with every fold that changes what is drawn."""

    def __init__(self, keep_steps: int | None = KEEP_STEPS) -> None:
        self.keep_steps = keep_steps
        self.lanes: dict[int, Lane] = {}
        self.first_step = 0
        self.last_step = -1
        self.version = 0
        self._pending: dict[int, int] = {}  # request -> PREEMPTED_AT / FINISHED_AT seen during the open step
        self._pending_step = -1
        self._seen_a_step = False

    # ------------------------------------------------------------------ queries
    def window(self, first: int, last: int) -> list[Lane]:
        """The lanes with something in steps first..last, by request id."""
        return [lane for rid, lane in sorted(self.lanes.items()) if lane.overlaps(first, last)]

    # ------------------------------------------------------------------ events
    def on_run_info(self, ev: RunInfo) -> None:  # a new run (or a reset): new requests, new steps
        self.lanes.clear()
        self._pending.clear()
        self.first_step, self.last_step = 0, -1
        self._seen_a_step = False
        self.version += 1

    def on_request(self, ev: RequestEvent) -> None:
        what = ev.what
        if what == ARRIVED:
            self._note_step(ev.step)
            self.lanes[ev.request_id] = Lane(ev.request_id, ev.step)
            self.version += 1
        elif what in (PREEMPTED, FINISHED):
            if ev.step != self._pending_step:
                self._flush_pending()
                self._pending_step = ev.step
            self._pending[ev.request_id] = PREEMPTED_AT if what == PREEMPTED else FINISHED_AT
            lane = self.lanes.get(ev.request_id)
            if lane is not None and what == FINISHED:
                lane.finished = ev.step

    def on_step_end(self, ev: StepEnd) -> None:
        step = ev.step
        pending = self._pending if self._pending_step == step else {}
        lanes = self.lanes
        for rid, tokens in ev.prefill:
            lane = lanes.get(rid)
            if lane is not None:
                self._put(lane, step, mark(PREFILL, tokens, pending.pop(rid, 0) == FINISHED_AT))
        for rid in ev.decode:
            lane = lanes.get(rid)
            if lane is not None:
                self._put(lane, step, mark(DECODE, 1, pending.pop(rid, 0) == FINISHED_AT))
        self._flush_pending()
        self._note_step(step)
        self.last_step = step
        self.version += 1
        if self.keep_steps is not None and step % 64 == 0:
            self._forget_before(step - self.keep_steps)

    # ------------------------------------------------------------------ helpers
    def _note_step(self, step: int) -> None:
        if not self._seen_a_step or step < self.first_step:
            self.first_step = step
            self._seen_a_step = True

    def _flush_pending(self) -> None:
        """Marks for what happened to requests outside the batch (a preemption, an abort)."""
        step = self._pending_step
        for rid, kind in self._pending.items():
            lane = self.lanes.get(rid)
            if lane is not None:
                self._put(lane, step, mark(kind))
        self._pending.clear()

    @staticmethod
    def _put(lane: Lane, step: int, code: int) -> None:
        steps = lane.steps
        if steps and steps[-1] >= step:  # a second mark for a step (preempted, then recomputed at once)
            i = bisect_right(steps, step)
            if steps[i - 1] == step:
                lane.marks[i - 1] = code if mark_kind(code) in (PREFILL, DECODE) else lane.marks[i - 1]
                return
            steps.insert(i, step)
            lane.marks.insert(i, code)
            return
        steps.append(step)
        lane.marks.append(code)

    def _forget_before(self, step: int) -> None:
        gone = [rid for rid, lane in self.lanes.items() if lane.finished is not None and lane.finished < step]
        for rid in gone:
            del self.lanes[rid]
        if step > self.first_step:
            self.first_step = step
