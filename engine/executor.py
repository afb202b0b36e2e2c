"""The engine's device side, chosen once: `make_executor(recipe, loaded, bus, range_hook, kernel_events)`.

An Executor is what LLMEngine.step runs a scheduled batch on (its runner's prepare / forward / sample), the
KV pool's size, and the step probe that watches it:

    a real device  (cpu, cuda) the paged KV pools (KVCache), the attention backend, the ModelRunner, decode
                   steps replayed (CUDA graphs, or a CPU's C decode programs), and the StepProbe (op timer)
    simulated      (`device: sim`, kvscope.engine.sim) the SimRunner, which prices each step by the cost model
                   on a virtual clock that becomes the bus's clock; no weights, no KV tensors, the pool as
                   `kvscope kv` sizes it; the SimStepProbe (estimated kernels)

What the recipe asks and the device cannot do is a RecipeError naming the recipe and the field: a pool that
holds no block (cache.memory_gib) or more than MEMORY_FRACTION of the free memory, an attention backend the
device cannot run, CUDA graphs off CUDA or off the triton backend; a simulated device's own refusals are
kvscope.engine.sim.setup's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import torch

from kvscope.config.recipe import Recipe
from kvscope.engine.core.math_utils import cdiv
from kvscope.engine.core.request import Request
from kvscope.engine.core.request_check import max_model_len
from kvscope.engine.core.scheduler import SchedulerOutput
from kvscope.engine.model.attention import (
    AttentionBackend,
    backend_refusal,
    make_attention_backend,
    resolve_backend_name,
)
from kvscope.engine.model.loader import LoadedModel
from kvscope.engine.probe.op_timer import RangeHook, strip_op_timers
from kvscope.engine.probe.step_probe import StepProbe
from kvscope.engine.sim.probe import SimStepProbe
from kvscope.engine.sim.setup import SimDeviceLabel, Simulation, build_simulation
from kvscope.engine.worker.cuda_graphs import DecodeGraphs
from kvscope.engine.worker.decode_program import CpuDecodePrograms
from kvscope.engine.worker.kv_cache import KVCache, available_memory
from kvscope.engine.worker.model_runner import ModelRunner
from kvscope.errors import RecipeError
from kvscope.events.bus import EventBus

if TYPE_CHECKING:
    from kvscope.engine.llm_engine import LLMEngine

MEMORY_FRACTION = 0.9  # of the device's free memory a KV pool may take
SIM_BACKEND = "cost-model"  # what a simulated device reports as its attention backend


class StepBatch(Protocol):
    """A prepared batch, as the step reads it: the requests that get new tokens."""

    @property
    def sampled(self) -> list[Request]: ...


Batch = TypeVar("Batch", bound=StepBatch)


class StepRunner(Protocol, Generic[Batch]):
    """What a step runs on the device: ModelRunner, or SimRunner on a simulated device."""

    def prepare(self, out: SchedulerOutput) -> Batch: ...
    def forward(self, batch: Batch) -> torch.Tensor | None: ...
    def sample(self, batch: Batch, logits: torch.Tensor | None) -> list[list[int] | None]: ...


@dataclass(slots=True)
class Executor:
    """An engine's device side (module docstring). `kv_cache` and `backend` are None on a simulated device,
    `sim` on a real one."""

    device: torch.device | SimDeviceLabel
    runner: StepRunner[Any]
    num_blocks: int
    bytes_per_block: int
    backend_name: str
    backend: AttentionBackend | None
    kv_cache: KVCache | None
    sim: Simulation | None
    probe_type: type[StepProbe]
    range_hook: RangeHook | None
    kernel_events: bool

    def step_probe(self, engine: LLMEngine) -> StepProbe:
        """The instruments of `engine`'s steps on this device (built once the engine holds the executor)."""
        return self.probe_type(engine, self.range_hook, self.kernel_events)


def make_executor(recipe: Recipe, loaded: LoadedModel, bus: EventBus, range_hook: RangeHook | None = None,
                  kernel_events: bool = True) -> Executor:
    """The device side of an engine of `recipe` over `loaded`: simulated for `device: sim`, real otherwise."""
    if recipe.device == "sim":
        return simulated_executor(recipe, loaded, bus, range_hook, kernel_events)
    return device_executor(recipe, loaded, range_hook, kernel_events)


def device_executor(recipe: Recipe, loaded: LoadedModel, range_hook: RangeHook | None,
                    kernel_events: bool) -> Executor:
    """A real device: the pool checked against free memory before it is allocated, the backend against the
    device, then the runner and its replayed decode steps."""
    cfg, device, dtype = loaded.config, loaded.device, loaded.dtype
    assert loaded.model is not None, "a real device needs the model's weights"
    block_size = recipe.cache.block_size
    model_len = max_model_len(recipe, cfg)
    bytes_per_block = KVCache.bytes_per_block(cfg.num_layers, block_size, cfg.num_kv_heads, cfg.head_dim, dtype)
    s = recipe.scheduler
    num_blocks = pool_blocks(recipe, bytes_per_block, cdiv(s.max_num_seqs * min(model_len, 512), block_size))
    check_pool_fits_memory(recipe, num_blocks, bytes_per_block, device)
    backend_name = resolve_backend_name(recipe.attention_backend, device)
    refusal = backend_refusal(backend_name, device)
    if refusal is not None:
        raise RecipeError(f"{recipe.source}: attention_backend: {refusal}")
    kv_cache = KVCache(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype, device)
    backend = make_attention_backend(backend_name, device, dtype)
    runner = ModelRunner(loaded.model, kv_cache, backend, device)
    if recipe.cuda_graphs:  # decode steps captured once per batch size (kvscope.engine.worker.cuda_graphs)
        if device.type != "cuda" or backend_name != "triton":
            raise RecipeError(f"{recipe.source}: cuda_graphs: needs a CUDA device and the triton attention "
                              f"backend; this run is on {device.type} with {backend_name}")
        strip_op_timers(loaded.model, runner)  # nothing of a timer may be captured into a graph
        runner.graphs = DecodeGraphs(loaded.model, device, s.max_num_seqs, model_len, block_size)
    elif CpuDecodePrograms.applies_to(loaded.model, dtype, device, backend):
        runner.graphs = CpuDecodePrograms(loaded.model, runner.kv_layers, s.max_num_seqs, model_len, block_size)
    return Executor(device, runner, num_blocks, bytes_per_block, backend_name, backend, kv_cache, None, StepProbe,
                    range_hook, kernel_events)


def simulated_executor(recipe: Recipe, loaded: LoadedModel, bus: EventBus, range_hook: RangeHook | None,
                       kernel_events: bool) -> Executor:
    """A simulated device (kvscope.engine.sim): its runner, its virtual clock on `bus`, its pool."""
    sim = build_simulation(recipe, loaded.config, loaded.tokenizer)
    bus.clock = sim.clock
    num_blocks = pool_blocks(recipe, sim.bytes_per_block, sim.num_blocks)
    return Executor(sim.label, sim.runner, num_blocks, sim.bytes_per_block, SIM_BACKEND, None, None, sim,
                    SimStepProbe, range_hook, kernel_events)


def pool_blocks(recipe: Recipe, bytes_per_block: int, default: int) -> int:
    """The KV pool's blocks: the recipe's cache.num_blocks, or what cache.memory_gib holds, or `default`."""
    c = recipe.cache
    if c.num_blocks is not None:
        return c.num_blocks
    if c.memory_gib is not None:
        n = int(c.memory_gib * 2**30) // bytes_per_block
        if n < 1:
            raise RecipeError(f"{recipe.source}: cache.memory_gib: {c.memory_gib} GiB holds no block "
                              f"of {bytes_per_block} bytes")
        return n
    return default


def check_pool_fits_memory(recipe: Recipe, num_blocks: int, bytes_per_block: int, device: torch.device) -> None:
    """Refuse, before allocating it, a pool larger than MEMORY_FRACTION of the device's free memory."""
    available = available_memory(device)
    pool = num_blocks * bytes_per_block
    if available is not None and pool > MEMORY_FRACTION * available:
        raise RecipeError(f"{recipe.source}: cache: a pool of {num_blocks} blocks of {bytes_per_block} bytes is "
                          f"{pool / 2**30:.1f} GiB, more than {MEMORY_FRACTION:.0%} of the "
                          f"{available / 2**30:.1f} GiB free on {device}")
