"""Setting up a simulated device (`device: sim`): the GPU preset, the checks, the cost model, the KV pool.

`build_simulation(recipe, config, tokenizer)` turns a recipe's `sim:` block into a Simulation: the GPU
preset (kvscope.costmodel.devices), the calibration profile (kvscope.costmodel.sim_profile; the ideal
roofline without one), the step cost model (kvscope.costmodel.sim_cost), the virtual clock, and the KV
pool sized as `kvscope kv` sizes it (kvscope.costmodel.kv_estimate: GPU memory x mem_util x GPUs, less
the weights, in whole blocks). Every problem is a RecipeError naming the recipe and the field: an unknown
GPU, tensor parallelism that does not divide the heads, a model whose weights do not fit, a profile that
is not one, an acceptance_from that is no run summary. Speculative decoding's acceptance model is the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.config.model_config import ModelConfig
from kvscope.config.recipe import Recipe
from kvscope.costmodel.devices import GIB, DeviceError, get_device
from kvscope.costmodel.kv_estimate import canonical_dtype, estimate_kv
from kvscope.costmodel.sim_cost import StepCostModel
from kvscope.costmodel.sim_profile import IDEAL, ProfileError, load_profile
from kvscope.engine.model.tokenizer import Tokenizer
from kvscope.engine.sim.runner import SimClock, SimRunner
from kvscope.engine.sim.speculation import measured_acceptance
from kvscope.errors import RecipeError


@dataclass(frozen=True, slots=True)
class SimDeviceLabel:
    """What the engine reports as its device: says that it is simulated, on what, and how split."""

    gpu: str
    num_gpus: int
    tp: int
    type: str = "sim"

    def __str__(self) -> str:
        split = f" tp{self.tp}" if self.tp > 1 else ""
        return f"simulated {self.num_gpus}x{self.gpu}{split}"


@dataclass(slots=True)
class Simulation:
    label: SimDeviceLabel
    cost: StepCostModel
    clock: SimClock
    num_blocks: int
    bytes_per_block: int
    runner: SimRunner


def filler_token(tokenizer: Tokenizer, vocab_size: int) -> int:
    """A token id that is no special token (the simulated runner's every output token)."""
    special = set(tokenizer.eos_token_ids)
    if tokenizer.bos_token_id is not None:
        special.add(tokenizer.bos_token_id)
    start = 100 if vocab_size > 1000 else 32
    return next(t for t in range(start, vocab_size) if t not in special)


def build_simulation(recipe: Recipe, config: ModelConfig, tokenizer: Tokenizer) -> Simulation:
    """The simulated device of `recipe` for a model of shape `config` (see the module docstring)."""
    spec, src = recipe.sim, recipe.source
    assert spec is not None, "build_simulation needs a recipe with device: sim"
    try:
        device = get_device(spec.gpu)
    except DeviceError as exc:
        raise RecipeError(f"{src}: sim.gpu: {str(exc).replace('; or --gpu-mem GiB', '')}") from None
    tp = spec.tp
    if config.num_heads % tp:
        raise RecipeError(f"{src}: sim.tp: {tp} does not divide the {config.num_heads} attention heads of "
                          f"{config.name}")
    kvh = config.num_kv_heads
    if not config.is_mla and kvh % tp and tp % kvh:
        raise RecipeError(f"{src}: sim.tp: {tp} neither divides nor is a multiple of the {kvh} KV heads of "
                          f"{config.name}")
    if tp > 1 and device.link_gbps <= 0:
        raise RecipeError(f"{src}: sim.tp: {device.name} has no GPU-to-GPU link in the presets; "
                          f"tensor parallelism needs one")
    profile = IDEAL
    if spec.profile:
        try:
            profile = load_profile(spec.profile)
        except ProfileError as exc:
            raise RecipeError(f"{src}: sim.profile: {exc}") from None
    dtype = canonical_dtype(recipe.dtype)
    block_size = recipe.cache.block_size
    est = estimate_kv(config, device, context=1, kv_dtype=dtype, weights_dtype=dtype, block_size=block_size,
                      mem_util=spec.mem_util, num_gpus=spec.num_gpus)
    assert est.num_blocks is not None and est.weights_bytes is not None, "a model the engine runs has a known size"
    explicit = recipe.cache.num_blocks is not None or recipe.cache.memory_gib is not None
    if est.num_blocks < 1 and not explicit:
        usable = est.device_bytes * spec.mem_util / GIB
        raise RecipeError(f"{src}: model: {config.name} does not fit: {est.weights_bytes / GIB:.1f} GiB of "
                          f"{dtype} weights, {usable:.1f} GiB usable on {spec.num_gpus} x {device.name} "
                          f"(sim.mem_util {spec.mem_util:g}); add GPUs (sim.num_gpus, sim.tp) or a bigger GPU")
    clock = SimClock()
    cost = StepCostModel(config, device, tp=tp, dtype=dtype, profile=profile)
    spec_decode, rate = recipe.speculative, None
    if spec_decode is not None:
        rate = spec_decode.acceptance_rate
        if rate is None and spec_decode.acceptance_from is not None:
            rate = measured_acceptance(spec_decode.acceptance_from, src)
    runner = SimRunner(cost, clock, filler_token(tokenizer, config.vocab_size), rate)
    return Simulation(SimDeviceLabel(device.name, spec.num_gpus, tp), cost, clock, est.num_blocks,
                      est.block_bytes, runner)
