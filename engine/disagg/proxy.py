"""A disaggregated deployment: prefill engines and decode engines behind one proxy (vLLM's disaggregated
prefill flow, its toy proxy's routing).

Each request goes to a prefill engine with max_tokens 1; when its prompt has run, that engine pins the
prompt's blocks and returns KVTransferParams with its first token. The proxy then hands the request to a
decode engine (prompt, first token, params), which allocates blocks of its own, loads the K/V into them
(the step's kv_load phase) and generates the rest. A request whose prefill ends it (a stop at the first
token, max_tokens 1, an error) never reaches a decode engine.

The proxy is an EngineClient (kvscope.engine.engine_client), as an LLMEngine is (add_request / step /
has_unfinished / output / abort / requests ...), so a RunSession, the bench and the server run a deployment as
they run one engine.
On its own bus it announces what a client sees, under the proxy's request ids: arrivals, first tokens
(when the decode engine has the K/V and runs the request: the transfer is inside TTFT, as with vLLM's
proxy, which streams the decode side), one StepEnd per proxy step with the tokens each request received,
and ends; so the ordinary Metrics (and the server's /metrics) measure the client's TTFT, ITL and
throughput. Each engine announces its own events on its own bus (`buses`, by engine id: "prefill-0",
"decode-0", ...); the trace gives each its own process. The engines are reached through handles
(kvscope.engine.disagg.handles: in this process; kvscope.engine.disagg.ray_engine: Ray actors).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from kvscope.config.model_config import ModelConfig
from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.request import RequestOutput, RequestStatus
from kvscope.engine.core.request_check import Prompt, RequestCheck
from kvscope.engine.disagg.handles import EngineHandle
from kvscope.engine.llm_engine import LLMEngine
from kvscope.errors import EngineDied, RequestError
from kvscope.events.bus import EventBus
from kvscope.events.records import RequestEvent, StepBegin, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, FIRST_TOKEN

if TYPE_CHECKING:
    from kvscope.engine.disagg.ray_engine import RayEngine
    from kvscope.engine.engine_client import VirtualClock


def _virtual_clock(bus: EventBus) -> VirtualClock:
    """A simulated engine's clock: its bus runs on the simulation's virtual clock (kvscope.engine.executor)."""
    return cast("VirtualClock", bus.clock)


@dataclass(slots=True)
class ProxyRequest:
    """A client's request: where it is ((engine, request id there) on its prefill engine, then its decode one)
    and what the client has of it (the attributes a server streams from, as of an engine's Request)."""

    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    prefill: tuple[str, int]
    decode: tuple[str, int] | None = None
    transfer_id: str = ""
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str = ""
    num_cached_tokens: int = 0
    output: RequestOutput | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids


class DeploymentClock:
    """Simulated engines' time as the proxy and the session see it: the earliest clock of an engine with work
    (everything before it has happened everywhere), or the latest when every engine is idle."""

    def __init__(self, proxy: DisaggregatedEngine) -> None:
        self.proxy = proxy

    def __call__(self) -> int:
        p = self.proxy
        busy = [h.bus.clock() for h in p.engines.values() if p._count[h.name]]
        busy += [ready for ready, *_ in p._handoffs]
        return min(busy) if busy else max(h.bus.clock() for h in p.engines.values())

    def advance_to(self, ns: int) -> None:
        """Jump the idle engines' clocks over an idle gap (never backwards)."""
        p = self.proxy
        for h in p.engines.values():
            if not p._count[h.name]:
                _virtual_clock(h.bus).advance_to(ns)


class SimulatedDeployment:
    """What a session asks of a simulated device (`engine.sim`), for a deployment of simulated engines."""

    def __init__(self, proxy: DisaggregatedEngine) -> None:
        self.clock = DeploymentClock(proxy)


class DisaggregatedEngine:
    """The proxy in front of a deployment's engines (module docstring)."""

    def __init__(self, recipe: Recipe, prefill: Sequence[EngineHandle], decode: Sequence[EngineHandle],
                 front: RequestCheck, config: ModelConfig, device: str, backend_name: str,
                 bus: EventBus | None = None) -> None:
        self.recipe = recipe
        self.prefill = list(prefill)
        self.decode = list(decode)
        self.engines = {h.name: h for h in self.prefill + self.decode}
        self.config = config
        self.tokenizer = front.tokenizer
        self.front = front  # encode_prompt / check_fits for every engine (one recipe, the smallest pool)
        self.bus = bus or EventBus()  # the proxy's clock; the engines' events are on `buses`
        self.buses = {h.name: h.bus for h in self.prefill + self.decode}
        self.virtual = recipe.device == "sim"  # simulated engines: virtual clocks, stepped in time order
        self.sim = SimulatedDeployment(self) if self.virtual else None
        if self.sim is not None:
            self.bus.clock = self.sim.clock
        self.device = device
        self.backend_name = backend_name
        self.block_size = recipe.cache.block_size
        self.num_blocks = front.num_blocks
        self.max_model_len = front.max_model_len
        self.dead: dict[str, str] = {}  # engine -> why it died
        self.reset()

    def reset(self) -> None:
        for h in self.engines.values():
            if h.name not in self.dead:
                h.reset()
        self.requests: dict[int, ProxyRequest] = {}
        self._on: dict[tuple[str, int], ProxyRequest] = {}  # (engine, its request id) -> the request there now
        self._count = Counter[str]()  # requests on each engine now
        self._handoffs: list[tuple[int, ProxyRequest, RequestOutput, EngineHandle]] = []  # simulated: not yet due
        self.next_request_id = 0
        self.step_id = 0

    # --- what an EngineClient answers --------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, limit: int | None = None) -> list[int]:
        return self.front.encode_prompt(prompt, limit)

    def blocks_needed(self, num_prompt_tokens: int, max_tokens: int) -> int:
        return self.front.blocks_needed(num_prompt_tokens, max_tokens)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> int:
        return self.front.check_fits(num_prompt_tokens, max_tokens)

    def has_unfinished(self) -> bool:
        return bool(self._on or self._handoffs)

    def output(self, request_id: int) -> RequestOutput:
        r = self.requests[request_id]
        if r.output is None:
            raise RequestError(f"request {request_id} has not finished")
        return r.output

    def close(self) -> None:
        """Stop the engines (a Ray deployment's actors; in-process engines need nothing)."""
        for h in self.engines.values():
            if h.name not in self.dead:
                h.close()

    def failure_report(self) -> str | None:
        """One line naming the requests that failed and why (an engine died, a transfer failed), or None."""
        why: dict[str, list[int]] = {}
        for r in self.requests.values():
            if r.output is not None and r.output.finish_reason == "error":
                why.setdefault(r.output.finish_detail or "error", []).append(r.request_id)
        if not why:
            return None
        return "; ".join(f"request{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} failed: {detail}"
                         for detail, ids in why.items())

    # --- requests ---------------------------------------------------------------------------
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None) -> int:
        """Send a request to the least busy prefill engine (max_tokens 1); its id at the proxy."""
        params = params or SamplingParams()
        params.validate()
        ids = self.encode_prompt(prompt)
        self.front.check_fits(len(ids), params.max_tokens)  # the decode side will need room for all of it
        engine = self._least_busy(self.prefill)
        if self.virtual and not self._count[engine.name]:
            _virtual_clock(engine.bus).advance_to(self.bus.clock())  # an idle simulated engine: its time is now
        first_leg = copy.copy(params)
        first_leg.max_tokens = 1
        try:
            engine_rid = engine.add_request(ids, first_leg, params.max_tokens > 1)
        except EngineDied as exc:
            self._died(engine, exc)
            return self.add_request(ids, params)
        rid = self.next_request_id
        self.next_request_id += 1
        req = ProxyRequest(rid, ids, params, (engine.name, engine_rid))
        self.requests[rid] = req
        self._place(req, engine.name, engine_rid)
        if self.bus.active:
            self.bus.emit(RequestEvent(self.bus.clock(), self.step_id, rid, ARRIVED, len(ids), 0, 0, params.max_tokens))
        return rid

    def abort(self, request_id: int) -> bool:
        """End a client request now (reason "abort") wherever it is; its blocks are freed on both sides."""
        req = self.requests.get(request_id)
        if req is None or req.output is not None:
            return False
        name, rid = req.decode or req.prefill
        if not self.engines[name].abort(rid):
            return False
        self._on.pop((name, rid), None)
        self._count[name] -= 1
        self._finish(req, RequestOutput(request_id, req.prompt_token_ids, list(req.output_token_ids), "", "abort"))
        return True

    def queue_depths(self) -> tuple[int, int]:
        """(waiting, running) client requests: those not yet generating, and those that are."""
        running = sum(1 for r in self._on.values() if r.status is RequestStatus.RUNNING)
        return len(self._on) - running, running

    # --- one step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One round: every engine with requests steps (in this process one after the other, decode engines
        first, so a prompt handed over now loads in the next round, as it would with engines running apart);
        Ray actors each step on their own, and a round takes the steps that finished first (an actor starts
        its next step as soon as its last was taken: no engine waits for another). Simulated engines step one
        at a time: the one whose virtual clock is earliest (a discrete-event simulation of engines side by
        side). Finished prompts go to the decode engines; returns the client requests that finished."""
        if self.virtual:
            self._deliver_handoffs()
            busy = [h for h in self.engines.values() if self._count[h.name]]
            busy = [min(busy, key=lambda h: h.bus.clock())] if busy else []
        else:
            busy = [h for h in self.decode + self.prefill if self._count[h.name]]
        begin = busy[0].bus.clock() if self.virtual and busy else self.bus.clock()
        if self.bus.active:
            self.bus.emit(StepBegin(begin, self.step_id))
        for h in busy:
            if not h.in_flight:
                h.start_step()
        busy = self._ready(busy)
        received: dict[int, int] = {}  # client request -> tokens it received in this step
        finished: list[RequestOutput] = []
        end = begin
        for h in busy:
            try:
                report = h.finish_step()
            except EngineDied as exc:
                finished += self._died(h, exc)
                continue
            now = h.bus.clock()  # its clock after the step: a simulated engine's own virtual time
            end = max(end, now)
            for rid, tokens in report.new_tokens.items():
                req = self._on.get((h.name, rid))
                if req is not None:
                    self._receive(req, tokens, received, now)
            for out in report.finished:
                req = self._on.pop((h.name, out.request_id), None)
                if req is None:
                    continue
                self._count[h.name] -= 1
                if req.decode is None and out.kv_transfer_params is not None:
                    finished += self._to_decode(req, out, now)
                else:
                    self._receive(req, out.token_ids[req.num_output_tokens:], received, now)
                    finished.append(self._finish(req, out, ts=now))
        if self.bus.active:
            waiting, running = self.queue_depths()
            self.bus.emit(StepEnd(end if self.virtual else self.bus.clock(), self.step_id, begin,
                                  sum(received.values()), 0, sampled=tuple(received.items()), num_running=running,
                                  num_waiting=waiting))
        self.step_id += 1
        return finished

    @staticmethod
    def _ready(busy: list[EngineHandle]) -> list[EngineHandle]:
        """The engines whose step has finished: in this process, all of them; Ray actors step on their own, and
        the proxy takes whichever finished first (no engine waits for another's step)."""
        local = [h for h in busy if not h.asynchronous]
        remote = [h for h in busy if h.asynchronous]
        if local or not remote:
            return local + [h for h in remote if h.step_done()]
        ray_engines = cast("list[RayEngine]", remote)  # a step runs elsewhere only in a Ray actor
        return list(type(ray_engines[0]).wait_any(ray_engines))

    def _receive(self, req: ProxyRequest, tokens: list[int], received: dict[int, int], ts: int) -> None:
        """Tokens reach the client: the first ones are its first token (FIRST_TOKEN on the proxy's bus)."""
        if not tokens:
            return
        if not req.output_token_ids:
            req.status = RequestStatus.RUNNING
            if self.bus.active:
                self.bus.emit(RequestEvent(ts, self.step_id, req.request_id, FIRST_TOKEN, req.num_prompt_tokens,
                                           len(tokens), req.num_prompt_tokens, req.params.max_tokens))
        req.output_token_ids += tokens
        received[req.request_id] = received.get(req.request_id, 0) + len(tokens)

    def _to_decode(self, req: ProxyRequest, out: RequestOutput, ready_ns: int) -> list[RequestOutput]:
        """Hand a prompt that ran to the least busy decode engine (simulated: once that engine's clock has
        reached the moment the prompt finished, `ready_ns`)."""
        params = out.kv_transfer_params
        assert params is not None
        req.transfer_id = params.transfer_id
        ended: list[RequestOutput] = []
        while self.decode:
            engine = self._least_busy(self.decode)
            if self.virtual:
                self._handoffs.append((ready_ns, req, out, engine))
                self._deliver_handoffs()
                return ended
            try:
                self._hand(req, out, engine)
            except EngineDied as exc:
                ended += self._died(engine, exc)
                continue
            return ended
        self._release(req)
        return ended + [self._finish(req, out, "error", "no decode engine is alive")]

    def _hand(self, req: ProxyRequest, out: RequestOutput, engine: EngineHandle) -> None:
        params = out.kv_transfer_params
        assert params is not None
        rid = engine.add_remote_request(req.prompt_token_ids, out.token_ids[0], req.params, params)
        req.decode = (engine.name, rid)
        self._place(req, engine.name, rid)

    def _deliver_handoffs(self) -> None:
        """Simulated engines: hand each waiting prompt to its decode engine once that engine's clock has caught
        up with the prompt's finish (an idle engine's clock jumps there)."""
        waiting = []
        for ready, req, out, engine in sorted(self._handoffs, key=lambda x: x[0]):
            if not self._count[engine.name]:
                _virtual_clock(engine.bus).advance_to(ready)
            if engine.bus.clock() >= ready:
                self._hand(req, out, engine)
            else:
                waiting.append((ready, req, out, engine))
        self._handoffs = waiting

    # --- bookkeeping ------------------------------------------------------------------------
    def _least_busy(self, engines: list[EngineHandle]) -> EngineHandle:
        if not engines:
            raise RequestError(f"no engine of this kind is alive ({'; '.join(self.dead.values())})")
        return min(engines, key=lambda h: self._count[h.name])

    def _place(self, req: ProxyRequest, engine: str, rid: int) -> None:
        self._on[(engine, rid)] = req
        self._count[engine] += 1

    def _finish(self, req: ProxyRequest, out: RequestOutput, reason: str = "", detail: str = "",
                ts: int | None = None) -> RequestOutput:
        req.output = o = RequestOutput(req.request_id, req.prompt_token_ids, out.token_ids, out.text,
                                       reason or out.finish_reason, out.num_cached_tokens, out.num_preemptions, None,
                                       detail or out.finish_detail)
        req.status, req.finish_reason = RequestStatus.FINISHED, o.finish_reason
        req.num_cached_tokens = o.num_cached_tokens
        if self.bus.active:
            self.bus.emit(RequestEvent(self.bus.clock() if ts is None else ts, self.step_id, o.request_id, FINISHED,
                                       req.num_prompt_tokens, req.num_output_tokens, 0, req.params.max_tokens,
                                       o.finish_reason))
        return o

    def clock_offsets(self) -> dict[str, dict[str, int]]:
        """Each engine's clock against this process's, as measured at start-up: offset (ns, added to its event
        times) and the round trip it was measured with; 0 / 0 for an engine in this process."""
        return {name: {"offset_ns": h.clock_offset_ns, "rtt_ns": h.clock_rtt_ns} for name, h in self.engines.items()}

    def local_engine(self, name: str) -> LLMEngine | None:
        """The LLMEngine behind engine `name` when it runs in this process (None for a Ray actor)."""
        return self.engines[name].engine

    def forget(self, request_id: int) -> None:
        """Drop a finished request's record (a server keeps no history)."""
        req = self.requests.get(request_id)
        if req is not None and req.output is not None:
            del self.requests[request_id]

    def _release(self, req: ProxyRequest) -> None:
        """Free a request's pins on its prefill engine (its decode side will never read them)."""
        engine = self.engines[req.prefill[0]]
        if req.transfer_id and engine.name not in self.dead:
            try:
                engine.release_kv(req.transfer_id)
            except EngineDied:
                pass

    def _died(self, engine: EngineHandle, exc: EngineDied) -> list[RequestOutput]:
        """An engine is gone: take it out of the deployment; its requests end with reason "error" (a decode
        engine's: their prompts' pins on the prefill side are released)."""
        self.dead[engine.name] = str(exc)
        for group in (self.prefill, self.decode):
            if engine in group:
                group.remove(engine)
        ended = []
        for key in [k for k in self._on if k[0] == engine.name]:
            req = self._on.pop(key)
            self._count[engine.name] -= 1
            if req.decode is not None:
                self._release(req)
            so_far = RequestOutput(req.request_id, req.prompt_token_ids, list(req.output_token_ids), "", "")
            ended.append(self._finish(req, so_far, "error", str(exc)))
        return ended
