"""Engines as Ray actors: a disaggregated deployment with `transport: ray`.

Each engine is an actor (one per prefill / decode engine, `cpus_per_engine` CPUs and as many torch
threads) that loads the recipe's model itself. The driver reaches it through a RayEngine handle: a step
is a remote call, so every engine of the deployment steps at the same time, and the step's events come
back with its result to be announced on the handle's bus in this process, their times moved onto this
process's clock. A decode actor reads a prefill actor's pinned blocks through a RayPeer: one remote call
whose answer (the blocks' bytes as a numpy array) travels through Ray's object store.

Clocks: at start-up the driver pings each actor a few times and keeps the offset of the quickest round
trip (NTP's rule). On one machine every process reads the same monotonic clock, so the offset comes out
within half a round trip of zero, and is then taken as zero; it is recorded either way (`clock_offsets`).
An actor that dies surfaces as EngineDied from its handle; the proxy ends that engine's requests.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.kv_connector import KVTransferParams
from kvscope.engine.disagg.handles import CONSUMER, PRODUCER, OutputProgress, StepReport, step_report
from kvscope.errors import EngineDied, RecipeError
from kvscope.events.bus import EventBus, EventList, now_ns
from kvscope.events.records import StepEnd

TIME_FIELDS = ("ts", "start", "end", "send_start", "send_end", "recv_start", "recv_end")
PINGS = 5


def require_ray(source: str) -> ModuleType:
    """The ray module, or a one-line RecipeError saying how to get it."""
    try:
        import ray
    except ImportError:
        raise RecipeError(f"{source}: deployment.transport: ray needs Ray, which is not installed "
                          f"(pip install 'kvscope[ray]', or transport: inprocess)") from None
    return ray


def shift_event(event: Any, offset_ns: int) -> Any:
    """The event with every timestamp it carries moved by offset_ns (onto another process's clock)."""
    if not offset_ns:
        return event
    changes = {name: getattr(event, name) + offset_ns for name in TIME_FIELDS if hasattr(event, name)}
    if isinstance(event, StepEnd):
        changes["phases"] = tuple((name, start + offset_ns, end + offset_ns) for name, start, end in event.phases)
    return dataclasses.replace(event, **changes)


class EngineActor:
    """The body of an engine actor (ray.remote(EngineActor) in start_ray_deployment)."""

    def __init__(self, raw: dict[str, Any], source: str, role: str, name: str, threads: int,
                 kernel_events: bool) -> None:
        from kvscope.engine.llm_engine import LLMEngine

        torch.set_num_threads(threads)
        self.bus = EventBus()
        self.events = EventList()
        self.bus.subscribe(self.events)
        self.engine = LLMEngine(Recipe.from_dict(raw, source), bus=self.bus, kernel_events=kernel_events,
                                kv_role=role, engine_id=name)
        self.progress = OutputProgress() if role == CONSUMER else None

    def describe(self) -> dict[str, Any]:
        e = self.engine
        return {"num_blocks": e.num_blocks, "device": str(e.device)}

    def clock_ns(self) -> int:
        return now_ns()

    def connect(self, producers: dict[str, tuple[Any, int]]) -> None:
        """A decode actor learns the prefill actors it reads from, with each one's clock offset onto its own."""
        self.engine.kv_peers.update({name: RayPeer(handle, offset) for name, (handle, offset) in producers.items()})

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, do_remote_decode: bool) -> int:
        return self.engine.add_request(prompt_token_ids, params, do_remote_decode=do_remote_decode)

    def add_remote_request(self, prompt_token_ids: list[int], first_token: int, params: SamplingParams,
                           kv_transfer_params: KVTransferParams) -> int:
        return self.engine.add_remote_request(prompt_token_ids, first_token, params, kv_transfer_params)

    def step(self) -> tuple[StepReport, list[Any]]:
        """One engine step: its report and every event since the last call."""
        return step_report(self.engine, self.progress), self.drain_events()

    def drain_events(self) -> list[Any]:
        with self.engine._lock:  # an acknowledgement in the other thread may be freeing blocks (and emitting)
            events, self.events.events = self.events.events, []
        return events

    def read_kv(self, transfer_id: str, block_ids: tuple[int, ...]) -> tuple[Any, tuple[int, ...], str, int, int]:
        """Pinned blocks' K/V as raw bytes (numpy uint8: any dtype, bf16 included), their shape and dtype, and the
        read's start / end on this actor's clock."""
        data, start, end = self.engine.read_kv(transfer_id, block_ids)
        raw = data.contiguous().view(torch.uint8).numpy()
        return raw, tuple(data.shape), str(data.dtype).removeprefix("torch."), start, end

    def release_kv(self, transfer_id: str) -> None:
        self.engine.release_kv(transfer_id)

    def abort(self, request_id: int) -> bool:
        return self.engine.abort(request_id)

    def reset(self) -> None:
        self.engine.reset()
        self.events.events = []
        if self.progress is not None:
            self.progress = OutputProgress()

    def pool(self) -> dict[str, int]:
        """The pool's counts, for leak checks: free, total, pinned transfers, live requests."""
        e = self.engine
        return {"free": e.block_manager.num_free_blocks, "total": e.num_blocks,
                "pinned": len(e.connector.pinned) if e.connector else 0,
                "unfinished": int(e.has_unfinished())}


class RayPeer:
    """A prefill actor as a decode actor's connector reads from it (a KVPeer)."""

    transport = "ray"

    def __init__(self, handle: Any, clock_offset_ns: int) -> None:
        self.handle = handle
        self.clock_offset_ns = clock_offset_ns

    def start_read(self, transfer_id: str, block_ids: tuple[int, ...]) -> RayRead:
        return RayRead(self.handle.read_kv.remote(transfer_id, block_ids))

    def release_kv(self, transfer_id: str) -> None:
        self.handle.release_kv.remote(transfer_id)  # the acknowledgement needs no answer


class RayRead:
    """A read from a prefill actor under way: its answer comes through the object store."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def done(self) -> bool:
        import ray

        ready, _ = ray.wait([self.ref], timeout=0)
        return bool(ready)

    def wait(self) -> None:
        import ray

        ray.wait([self.ref])

    def result(self) -> tuple[torch.Tensor, int, int]:
        import ray

        raw, shape, dtype, start, end = ray.get(self.ref)
        return torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape), start, end


class RayEngine:
    """An engine actor as the proxy drives it (an EngineHandle); its events appear on `bus`."""

    asynchronous = True
    engine = None  # the LLMEngine lives in the actor, not in this process

    def __init__(self, ray: ModuleType, actor: Any, name: str) -> None:
        self.ray = ray
        self.actor = actor
        self.name = name
        self.bus = EventBus()
        described = self._get(actor.describe.remote())
        self.num_blocks, self.device = described["num_blocks"], described["device"]
        self.clock_offset_ns, self.clock_rtt_ns = self._measure_offset()
        self._step: Any = None

    def _get(self, ref: Any) -> Any:
        try:
            return self.ray.get(ref)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorDiedError) as exc:
            raise EngineDied(f"engine {self.name} (Ray actor) died: {str(exc).splitlines()[0]}") from None

    def _measure_offset(self) -> tuple[int, int]:
        """(offset of the actor's clock onto ours, the round trip it was measured with): the quickest of PINGS."""
        best: tuple[int, int] | None = None
        for _ in range(PINGS):
            t0 = now_ns()
            remote = self._get(self.actor.clock_ns.remote())
            t1 = now_ns()
            if best is None or t1 - t0 < best[1]:
                best = ((t0 + t1) // 2 - remote, t1 - t0)
        assert best is not None  # PINGS > 0
        offset, rtt = best
        return (0 if abs(offset) <= rtt // 2 else offset), rtt

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, do_remote_decode: bool) -> int:
        return self._get(self.actor.add_request.remote(prompt_token_ids, params, do_remote_decode))

    def add_remote_request(self, prompt_token_ids: list[int], first_token: int, params: SamplingParams,
                           kv_transfer_params: KVTransferParams) -> int:
        return self._get(self.actor.add_remote_request.remote(prompt_token_ids, first_token, params,
                                                              kv_transfer_params))

    @property
    def in_flight(self) -> bool:
        return self._step is not None

    def start_step(self) -> None:
        self._step = self.actor.step.remote()

    def step_done(self) -> bool:
        ready, _ = self.ray.wait([self._step], timeout=0)
        return bool(ready)

    @staticmethod
    def wait_any(engines: list[RayEngine]) -> list[RayEngine]:
        """Block until at least one of the engines' steps has finished; those that have."""
        ray = engines[0].ray
        by_ref = {h._step: h for h in engines}
        ready, _ = ray.wait(list(by_ref), num_returns=1)
        more, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        return [by_ref[r] for r in {*ready, *more}]

    def finish_step(self) -> StepReport:
        ref, self._step = self._step, None
        report, events = self._get(ref)
        if self.bus.active and events:
            self.bus.emit_all([shift_event(e, self.clock_offset_ns) for e in events])
        return report

    def abort(self, request_id: int) -> bool:
        return self._get(self.actor.abort.remote(request_id))

    def release_kv(self, transfer_id: str) -> None:
        self._get(self.actor.release_kv.remote(transfer_id))

    def reset(self) -> None:
        self._get(self.actor.reset.remote())

    def pool(self) -> dict[str, int]:
        return self._get(self.actor.pool.remote())

    def kill(self) -> None:
        self.ray.kill(self.actor)

    close = kill  # a deployment's end: the actor's memory goes back


def start_ray_deployment(recipe: Recipe, kernel_events: bool = True) -> tuple[list[RayEngine], list[RayEngine]]:
    """Start the recipe's engines as actors (Ray started here if it is not yet: num_cpus = the engines' CPUs);
    each decode actor connected to every prefill actor."""
    ray = require_ray(recipe.source)
    spec = recipe.deployment
    if not ray.is_initialized():
        ray.init(num_cpus=(spec.prefill + spec.decode) * spec.cpus_per_engine, include_dashboard=False,
                 log_to_driver=False)
    # one thread per actor: a read of pinned blocks waits for the step in progress (a threaded actor read them
    # beside it, 27-50 ms instead of ~1.3 s a transfer, but the decode side's ITL p99 rose ~9x: not yet understood)
    actor_class = ray.remote(num_cpus=spec.cpus_per_engine)(EngineActor)

    def start(role: str, name: str) -> Any:
        return actor_class.options(name=None).remote(recipe.raw, recipe.source, role, name, spec.cpus_per_engine,
                                                     kernel_events)

    prefill_actors = {f"prefill-{i}": start(PRODUCER, f"prefill-{i}") for i in range(spec.prefill)}
    decode_actors = {f"decode-{i}": start(CONSUMER, f"decode-{i}") for i in range(spec.decode)}
    prefill = [RayEngine(ray, actor, name) for name, actor in prefill_actors.items()]
    decode = [RayEngine(ray, actor, name) for name, actor in decode_actors.items()]
    for d in decode:  # a prefill actor's time onto a decode actor's clock: through ours
        d._get(d.actor.connect.remote({p.name: (p.actor, p.clock_offset_ns - d.clock_offset_ns) for p in prefill}))
    return prefill, decode
