"""A small recorded run, event by event: three requests through prefill chunks, decodes, a preemption, a
recompute and an abort (the batch timeline's and the TUI's tests read the same one)."""

from kvscope.events.records import RequestEvent, RunInfo, StepBegin, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, PREEMPTED


def info() -> RunInfo:
    return RunInfo(0, -1, "tiny", 1, 2, 1, 4, 8, "float32", "cpu", "torch", "continuous", 8, 4, 64, 16, 4, 64)


def step(n: int, prefill=(), decode=()) -> list:
    return [StepBegin(10 * n, n), StepEnd(10 * n + 5, n, 10 * n, 0, 16, tuple(prefill), tuple(decode))]


def stream() -> list:
    """Request 0 prefills in two chunks, decodes, is preempted, recomputes and finishes; request 1 arrives
    at step 1, waits, prefills at step 2 and finishes at step 4; request 2 is aborted without running."""
    ev = [info(), RequestEvent(1, 0, 0, ARRIVED)]
    ev += step(0, prefill=[(0, 16)])
    ev += [RequestEvent(11, 1, 1, ARRIVED)] + step(1, prefill=[(0, 4)])
    ev += step(2, prefill=[(1, 8)], decode=[0])
    ev += [RequestEvent(31, 3, 0, PREEMPTED), RequestEvent(32, 3, 2, ARRIVED)] + step(3, decode=[1])
    ev += [RequestEvent(41, 4, 1, FINISHED, reason="length"), RequestEvent(42, 4, 2, FINISHED, reason="abort")]
    ev += step(4, decode=[1])
    ev += step(5, prefill=[(0, 22)])
    ev += [RequestEvent(61, 6, 0, FINISHED, reason="stop")] + step(6, decode=[0])
    return ev
