"""A deployment's engines as its proxy reaches them: the EngineHandle interface, the in-process handle
(LocalEngine) and the in-process KV peer (LocalPeer); the Ray ones are in kvscope.engine.disagg.ray_engine.

A handle's step is split in two (start_step, finish_step) so that engines in other processes step at the
same time. finish_step reports what the step finished and, for a decode engine, each running request's new
output tokens (StepReport.new_tokens): what a server streams. A decode engine's request reports its first
token (known from the prefill engine) once its K/V has landed and it runs, not before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.kv_connector import DoneRead, KVTransferParams
from kvscope.engine.core.request import RequestOutput
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events.bus import EventBus

PRODUCER, CONSUMER = "kv_producer", "kv_consumer"


@dataclass(slots=True)
class StepReport:
    """One engine step as the proxy hears of it: the requests it finished, and each running request's output
    tokens that were not reported before (decode engines)."""

    finished: list[RequestOutput] = field(default_factory=list)
    new_tokens: dict[int, list[int]] = field(default_factory=dict)


class OutputProgress:
    """Which output tokens of an engine's running requests were already reported."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}

    def take(self, engine: LLMEngine, finished: list[RequestOutput]) -> dict[int, list[int]]:
        """The running requests' output tokens since the last call (finished ones are forgotten)."""
        new: dict[int, list[int]] = {}
        sent = self.sent
        for req in engine.scheduler.running:
            n = sent.get(req.request_id, 0)
            if req.num_output_tokens > n:
                new[req.request_id] = req.output_token_ids[n:]
                sent[req.request_id] = req.num_output_tokens
        for out in finished:
            sent.pop(out.request_id, None)
        return new


def step_report(engine: LLMEngine, progress: OutputProgress | None) -> StepReport:
    """Run one step of `engine`; its report (with progress when the engine is a decode engine)."""
    finished = engine.step()
    return StepReport(finished, progress.take(engine, finished) if progress is not None else {})


class EngineHandle(Protocol):
    """One engine of a deployment as the proxy drives it (in this process, or a Ray actor)."""

    name: str
    bus: EventBus  # where its events appear in this process
    num_blocks: int
    asynchronous: bool  # its step runs elsewhere (Ray): start_step returns at once
    clock_offset_ns: int  # its clock onto this process's, as measured at start-up (0 in this process)
    clock_rtt_ns: int     # the round trip that offset was measured with

    @property
    def in_flight(self) -> bool:
        """A step started and not yet finished."""
        ...

    @property
    def engine(self) -> LLMEngine | None:
        """The LLMEngine itself when it runs in this process (None: a Ray actor's)."""
        ...

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, do_remote_decode: bool) -> int: ...
    def add_remote_request(self, prompt_token_ids: list[int], first_token: int, params: SamplingParams,
                           kv_transfer_params: KVTransferParams) -> int: ...
    def start_step(self) -> None: ...
    def step_done(self) -> bool: ...
    def finish_step(self) -> StepReport: ...
    def abort(self, request_id: int) -> bool: ...
    def release_kv(self, transfer_id: str) -> None: ...
    def close(self) -> None: ...
    def reset(self) -> None: ...


class LocalPeer:
    """A prefill engine in this process, as a decode engine's connector reads from it (a KVPeer)."""

    transport = "inprocess"
    clock_offset_ns = 0

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine

    def start_read(self, transfer_id: str, block_ids: tuple[int, ...]) -> DoneRead:
        """In one process a read is a copy: done when it starts."""
        return DoneRead(lambda: self.engine.read_kv(transfer_id, block_ids))

    def release_kv(self, transfer_id: str) -> None:
        self.engine.release_kv(transfer_id)


class LocalEngine:
    """An engine in this process (an EngineHandle): its step runs in start_step."""

    asynchronous = False
    in_flight = False  # start_step runs the whole step
    clock_offset_ns = clock_rtt_ns = 0  # one process, one clock

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.name = engine.engine_id
        self.bus = engine.bus
        self.num_blocks = engine.num_blocks
        self._progress = OutputProgress() if engine.kv_role == CONSUMER else None
        self._report = StepReport()

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, do_remote_decode: bool) -> int:
        return self.engine.add_request(prompt_token_ids, params, do_remote_decode=do_remote_decode)

    def add_remote_request(self, prompt_token_ids: list[int], first_token: int, params: SamplingParams,
                           kv_transfer_params: KVTransferParams) -> int:
        return self.engine.add_remote_request(prompt_token_ids, first_token, params, kv_transfer_params)

    def start_step(self) -> None:
        self._report = step_report(self.engine, self._progress)

    def step_done(self) -> bool:
        return True

    def finish_step(self) -> StepReport:
        report, self._report = self._report, StepReport()
        return report

    def abort(self, request_id: int) -> bool:
        return self.engine.abort(request_id)

    def release_kv(self, transfer_id: str) -> None:
        self.engine.release_kv(transfer_id)

    def close(self) -> None:
        """Nothing to stop: the engine lives and dies with this process."""

    def reset(self) -> None:
        self.engine.reset()
        if self._progress is not None:
            self._progress = OutputProgress()
