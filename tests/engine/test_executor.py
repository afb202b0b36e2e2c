"""The executor factory (kvscope.engine.executor.make_executor): the engine's device side chosen once, real or
simulated, and what a recipe asks that the device cannot do refused in one line naming the field."""

from __future__ import annotations

import pytest
import torch

from kvscope.config.recipe import Recipe
from kvscope.engine import executor as executor_module
from kvscope.engine.executor import SIM_BACKEND, make_executor
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import load_for_recipe
from kvscope.engine.probe.step_probe import StepProbe
from kvscope.engine.sim.probe import SimStepProbe
from kvscope.engine.sim.runner import SimClock, SimRunner
from kvscope.engine.worker.decode_program import CpuDecodePrograms
from kvscope.engine.worker.kv_cache import KVCache
from kvscope.engine.worker.model_runner import ModelRunner
from kvscope.errors import RecipeError
from kvscope.events.bus import EventBus, now_ns

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"model": {"source": "random", "shape": "tiny", "seed": 0}, "device": "cpu", "dtype": "float32",
        "attention_backend": "torch", "workload": {"prompts": ["-"]},
        "cache": {"block_size": 4, "num_blocks": 40},
        "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 64, "max_model_len": 128}}
SIM = {"model": {"source": "random", "shape": "tiny", "seed": 0}, "device": "sim", "sim": {"gpu": "H100-80GB"},
       "workload": {"prompts": ["-"]}, "cache": {"block_size": 16},
       "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 64, "max_model_len": 128}}


def recipe(base: dict, **changes: object) -> Recipe:
    return Recipe.from_dict({**base, **changes})


def executor_of(r: Recipe, bus: EventBus | None = None):
    return make_executor(r, load_for_recipe(r), bus or EventBus())


def test_a_real_device_gets_the_runner_the_pools_the_backend_and_the_step_probe():
    r = recipe(TINY)
    bus = EventBus()
    loaded = load_for_recipe(r)
    ex = make_executor(r, loaded, bus)
    assert isinstance(ex.runner, ModelRunner) and isinstance(ex.kv_cache, KVCache)
    assert ex.runner.model is loaded.model and ex.runner.kv_layers[0][0] is ex.kv_cache.k[0]
    assert ex.device == torch.device("cpu") and ex.backend_name == "torch" and ex.backend is not None
    assert ex.num_blocks == ex.kv_cache.num_blocks == 40 and ex.sim is None and ex.probe_type is StepProbe
    assert ex.kv_cache.nbytes == ex.num_blocks * ex.bytes_per_block
    assert bus.clock is now_ns  # a real device keeps the monotonic clock
    assert isinstance(ex.runner.graphs, CpuDecodePrograms) == CpuDecodePrograms.applies_to(
        loaded.model, loaded.dtype, ex.device, ex.backend)


def test_a_pool_of_no_given_size_holds_max_num_seqs_sequences_of_up_to_512_tokens():
    cache = {"block_size": 4}
    assert executor_of(recipe(TINY, cache=cache)).num_blocks == 4 * 128 // 4  # max_model_len 128 < 512


def test_a_simulated_device_gets_the_sim_runner_its_clock_and_the_pool_kv_sizes():
    r = recipe(SIM)
    bus = EventBus()
    ex = executor_of(r, bus)
    assert isinstance(ex.runner, SimRunner) and ex.kv_cache is None and ex.backend is None
    assert ex.backend_name == SIM_BACKEND and ex.probe_type is SimStepProbe
    assert ex.sim is not None and ex.num_blocks == ex.sim.num_blocks > 0  # kvscope kv's sizing
    assert isinstance(bus.clock, SimClock) and bus.clock is ex.sim.clock is ex.runner.clock
    assert str(ex.device).startswith("simulated 1x")
    assert executor_of(recipe(SIM, cache={"block_size": 16, "num_blocks": 7})).num_blocks == 7  # the recipe's


def test_the_engine_takes_its_device_side_from_the_executor_on_either_device():
    for r, probe in ((recipe(TINY), StepProbe), (recipe(SIM), SimStepProbe)):
        engine = LLMEngine(r)
        ex = engine.executor
        assert engine.runner is ex.runner and engine.kv_cache is ex.kv_cache and engine.sim is ex.sim
        assert engine.num_blocks == ex.num_blocks == engine.block_manager.num_blocks
        assert type(engine.probe) is probe and engine.probe.engine is engine
        engine.add_request([5, 6, 7, 8, 9], None)
        while engine.has_unfinished():
            engine.step()
        assert engine.requests[0].finish_reason


def test_a_pool_that_holds_no_block_is_refused_on_either_device():
    for base in (TINY, SIM):
        cache = {"block_size": 16, "memory_gib": 1e-9}
        with pytest.raises(RecipeError, match=r"cache\.memory_gib: 1e-09 GiB holds no block of \d+ bytes"):
            executor_of(recipe(base, cache=cache))


def test_a_pool_beyond_the_free_memory_is_refused_before_it_is_allocated(monkeypatch):
    class Unallocated(KVCache):
        def __init__(self, *args: object) -> None:
            raise AssertionError("the pool was allocated before it was checked")

    monkeypatch.setattr(executor_module, "available_memory", lambda device: 1024)
    monkeypatch.setattr(executor_module, "KVCache", Unallocated)
    with pytest.raises(RecipeError, match=r"cache: a pool of 40 blocks of \d+ bytes is .* more than 90% of the "
                                          r"0\.0 GiB free on cpu"):
        executor_of(recipe(TINY, cache={"block_size": 4, "num_blocks": 40}))


def test_a_backend_the_device_cannot_run_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RecipeError, match="attention_backend: triton runs on a CUDA device"):
        executor_of(recipe(TINY, attention_backend="triton"))


def test_cuda_graphs_off_cuda_are_refused(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: auto resolves to cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RecipeError, match="cuda_graphs: needs a CUDA device .* this run is on cpu with triton"):
        executor_of(recipe(TINY, device="auto", attention_backend="triton", cuda_graphs=True))


def test_a_simulated_device_refuses_what_it_cannot_simulate():
    with pytest.raises(RecipeError, match=r"sim\.gpu: "):
        executor_of(recipe(SIM, sim={"gpu": "no-such-gpu"}))
