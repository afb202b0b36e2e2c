"""Putting a server together: the engine from a recipe, its thread, metrics and event hub on its bus, the
app, and uvicorn. `serve_recipe` is `kvscope serve`; `ServerThread` runs one in the background on a free
loopback port (tests, benchmarks, `kvscope bench serve --serve`)."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from kvscope.config.recipe import Recipe
from kvscope.engine.engine_client import EngineClient
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import LoadedModel
from kvscope.events.bus import EventBus
from kvscope.serve.server.app import ServerState, build_app
from kvscope.serve.server.auth import exposure_warning
from kvscope.serve.server.body import DEFAULT_MAX_REQUEST_BODY_BYTES
from kvscope.serve.server.engine_loop import EngineLoop
from kvscope.serve.server.event_hub import DEFAULT_CAPACITY, EventHub
from kvscope.serve.server.metrics import ServeMetrics


@dataclass(slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_waiting: int | None = None
    kernel_events: bool = False
    event_buffer: int = DEFAULT_CAPACITY
    on_engine: Callable[[LLMEngine, EventBus], Any] | None = None  # more subscribers (the cli's text probe)
    seed: int | None = None  # the engine generator's seed (vLLM's --seed); requests without a seed draw from it
    api_keys: tuple[str, ...] = ()  # --api-key (or VLLM_API_KEY): none, no key needed
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES


def default_model_name(recipe: Recipe) -> str:
    """What clients pass as `model` unless --served-model-name says otherwise: the random preset's name, or the
    model path as the recipe gives it (`smollm2` for the packaged GGUF), as vLLM serves a model by its path; a
    published shape (source: preset, a simulated device) by its name."""
    model = recipe.model
    if model.source == "random":
        return model.shape
    return model.name if model.source == "preset" else model.path


def build_state(recipe: Recipe, options: ServeOptions, loaded: LoadedModel | None = None) -> ServerState:
    """Engine (not started), metrics and event hub subscribed to its bus, the handlers' shared state.

    A disaggregated recipe serves its deployment: the proxy (kvscope.engine.disagg.proxy) sends each request
    to a prefill engine, then a decode engine, and the server streams what the decode side generates; the
    metrics are the client's (the proxy's bus) plus the KV transfers'; an attached viewer watches the first
    decode engine when it runs in this process (in-process transport)."""
    bus = EventBus()
    name = options.served_model_name or default_model_name(recipe)
    metrics = ServeMetrics(name, max_model_len=recipe.scheduler.max_model_len,
                           speculative=recipe.speculative is not None, tp=recipe.sim.tp if recipe.sim else 1,
                           cache_info=cache_info(recipe))
    hub = EventHub(options.event_buffer)
    bus.subscribe(metrics)
    engine: EngineClient
    watched: LLMEngine | None
    if recipe.deployment.disaggregated:
        from kvscope.engine.disagg.deployment import build_deployment

        engine = deployment = build_deployment(recipe, loaded, kernel_events=options.kernel_events, bus=bus)
        for engine_bus in deployment.buses.values():
            engine_bus.subscribe(metrics.kv_transfer_observer)
        deployment.buses[deployment.decode[0].name].subscribe(metrics.pool_observer)
        watched = deployment.local_engine(deployment.decode[0].name)
    else:
        engine = watched = LLMEngine(recipe, loaded=loaded, bus=bus, kernel_events=options.kernel_events)
    metrics.shape = engine.config  # each step is priced on the served model's shape
    if options.seed is not None and isinstance(engine, LLMEngine):
        engine.generator.manual_seed(options.seed)
    if watched is not None:
        watched.bus.subscribe(hub)
        if options.on_engine is not None:
            options.on_engine(watched, watched.bus)
    return ServerState(EngineLoop(engine), name, metrics, hub, recipe.sampling, options.max_waiting,
                       int(time.time()), watched, tuple(options.api_keys), options.max_request_body_bytes)


def cache_info(recipe: Recipe) -> dict[str, str]:
    """The cache settings vllm:cache_config_info shows beyond the engine's RunInfo, under vLLM's CacheConfig names."""
    info = {"gpu_memory_utilization": str(recipe.sim.mem_util) if recipe.sim else "None",
            "num_gpu_blocks_override": str(recipe.cache.num_blocks)}
    info["kv_cache_memory_bytes"] = str(round(recipe.cache.memory_gib * 2**30)) if recipe.cache.memory_gib else "None"
    return info


def _config(state: ServerState, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(build_app(state), host=host, port=port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=1, lifespan="off")


def serve_recipe(recipe: Recipe, options: ServeOptions) -> int:
    """`kvscope serve`: run until interrupted."""
    warning = exposure_warning(options.host, options.port, options.api_keys)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    state = build_state(recipe, options)
    state.engine.start()
    gc.collect()
    gc.freeze()  # vLLM's freeze_gc_heap: full collections skip the startup heap (torch, the model), no ~70 ms pauses
    key = " --api-key KEY" if options.api_keys else ""
    print(f"kvscope serve: {state.model_name} on http://{options.host}:{options.port}/v1 "
          f"(metrics /metrics, attach: kvscope attach http://{options.host}:{options.port}{key})", flush=True)
    try:
        uvicorn.Server(_config(state, options.host, options.port)).run()
    finally:
        state.engine.stop()
        _close(state)
        gc.unfreeze()
    return 0


def _close(state: ServerState) -> None:
    """Stop the handlers' worker threads and what the engine started outside this process (a deployment's Ray
    actors)."""
    state.offload.close()
    state.engine.engine.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """A server in a background thread on a free loopback port: `with ServerThread(recipe) as srv: srv.url`."""

    def __init__(self, recipe: Recipe, options: ServeOptions | None = None,
                 loaded: LoadedModel | None = None) -> None:
        self.options = options or ServeOptions(port=0)
        if not self.options.port:  # 0: any free port
            self.options.port = free_port(self.options.host)
        self.state = build_state(recipe, self.options, loaded)
        self.server = uvicorn.Server(_config(self.state, self.options.host, self.options.port))
        self._thread = threading.Thread(target=self._run, name="kvscope-serve-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.state.engine.start()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.state.engine.stop()
        _close(self.state)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
