"""`kvscope serve`'s first argument and vLLM's engine flags, made into the recipe it serves.

The argument is a recipe (`.yaml` / `.yml`) or a model: `smollm2` (the packaged GGUF), a `.gguf` file, a Hugging
Face folder (config.json + *.safetensors) or a random-weight preset (`tiny`, `smollm2-135m-random`, ...). A model
is served with vLLM's defaults for an API server on a CPU (max_num_seqs 128, max_num_batched_tokens 2048, prefix
caching and chunked prefill on, the model's own context length as max_model_len); a recipe keeps its own values.
Every flag given overrides either, under vLLM's name and meaning; a bad value is one line naming the flag (the
recipe's own validation, its field path replaced by the flag).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kvscope.cli.errors import UsageError
from kvscope.config.recipe import Recipe, load_recipe
from kvscope.errors import RecipeError

SERVING_DEFAULTS: dict[str, Any] = {  # vLLM 0.32's for `vllm serve` on a CPU (EngineArgs, CpuPlatform)
    "scheduler": {"max_num_seqs": 128, "max_num_batched_tokens": 2048, "chunked_prefill": True,
                  "max_model_len": 2**31 - 1},  # the engine keeps the smaller: the model's context length
    "cache": {"prefix_caching": True},
    "workload": {"synthetic": {}},  # never run: requests come over HTTP
}
DTYPES = {"auto": None, "half": "float16", "float16": "float16", "bfloat16": "bfloat16", "float": "float32",
          "float32": "float32"}
FIELDS = {  # an EngineArgs field -> (its flag, the recipe field it sets)
    "max_model_len": ("--max-model-len", "scheduler.max_model_len"),
    "max_num_seqs": ("--max-num-seqs", "scheduler.max_num_seqs"),
    "max_num_batched_tokens": ("--max-num-batched-tokens", "scheduler.max_num_batched_tokens"),
    "enable_chunked_prefill": ("--enable-chunked-prefill", "scheduler.chunked_prefill"),
    "block_size": ("--block-size", "cache.block_size"),
    "enable_prefix_caching": ("--enable-prefix-caching", "cache.prefix_caching"),
    "num_gpu_blocks_override": ("--num-gpu-blocks-override", "cache.num_blocks"),
    "kv_cache_memory_bytes": ("--kv-cache-memory-bytes", "cache.memory_gib"),
    "gpu_memory_utilization": ("--gpu-memory-utilization", "sim.mem_util"),
    "tensor_parallel_size": ("--tensor-parallel-size", "sim.tp"),
    "dtype": ("--dtype", "dtype"),
    "speculative_config": ("--speculative-config", "speculative"),
}


@dataclass(slots=True)
class EngineArgs:
    """vLLM's engine flags that kvscope's engine has a concept for; None: not given."""

    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool | None = None
    block_size: int | None = None
    enable_prefix_caching: bool | None = None
    num_gpu_blocks_override: int | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    dtype: str | None = None
    speculative_config: str | None = None  # JSON, as vLLM takes it
    kv_cache_dtype: str = "auto"
    scheduling_policy: str = "fcfs"
    enforce_eager: bool = False
    seed: int | None = None  # the engine's generator (not a per-request seed): ServeOptions.seed


def model_mapping(name: str) -> dict[str, Any]:
    """The recipe `model` a serve argument (or a speculative `model`) names: a GGUF file, a Hugging Face folder,
    smollm2 or a random-weight preset (UsageError naming it if none)."""
    from kvscope.cli.recipe_args import model_override

    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"{name}: no such GGUF file")
        return {"source": "gguf", "path": str(path)}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{name}: not a Hugging Face model folder (no config.json)")
        return {"source": "hf", "path": str(path)}
    try:
        return model_override(name)
    except UsageError:
        raise UsageError(f"{name}: not a recipe (.yaml), a .gguf file, a Hugging Face folder or a known model "
                         f"(smollm2, tiny, smollm2-135m-random, ...)") from None


def serve_recipe_for(target: str, args: EngineArgs) -> Recipe:
    """The recipe `kvscope serve TARGET [flags]` serves; UsageError / RecipeError (one line) if it cannot."""
    if Path(target).suffix in (".yaml", ".yml"):
        recipe = load_recipe(target)
    else:
        recipe = Recipe.from_dict({"name": Path(target).stem or target, "model": model_mapping(target),
                                   **SERVING_DEFAULTS}, source="<dict>")
    overrides = _overrides(recipe, args)
    if not overrides:
        return recipe
    try:
        return recipe.with_overrides(overrides)
    except RecipeError as exc:
        raise UsageError(_flag_error(str(exc))) from None


def _overrides(recipe: Recipe, args: EngineArgs) -> dict[str, Any]:
    """The recipe mapping the given flags stand for (refusing what the engine does not have)."""
    if args.kv_cache_dtype != "auto":
        raise UsageError(f"--kv-cache-dtype: only auto (the model's dtype) so far, got {args.kv_cache_dtype!r}")
    if args.scheduling_policy != "fcfs":
        raise UsageError(f"--scheduling-policy: only fcfs so far, got {args.scheduling_policy!r}")
    if recipe.device != "sim":
        if args.gpu_memory_utilization is not None:
            raise UsageError(f"--gpu-memory-utilization: applies to a simulated GPU (a recipe with device: sim); on "
                             f"{recipe.device} size the KV pool with --kv-cache-memory-bytes or "
                             f"--num-gpu-blocks-override")
        if args.tensor_parallel_size not in (None, 1):
            raise UsageError(f"--tensor-parallel-size: more than 1 needs a simulated device (device: sim), got "
                             f"{args.tensor_parallel_size}")
        args.tensor_parallel_size = None
    if args.num_gpu_blocks_override is not None and args.kv_cache_memory_bytes is not None:
        raise UsageError("--num-gpu-blocks-override: give it or --kv-cache-memory-bytes, not both")
    out: dict[str, Any] = {}
    for f in fields(args):
        value = getattr(args, f.name)
        if f.name not in FIELDS or value is None:
            continue
        if f.name == "dtype":
            if value not in DTYPES:
                raise UsageError(f"--dtype: must be one of {', '.join(DTYPES)}, got {value!r}")
            value = DTYPES[value] or recipe.dtype
        elif f.name == "kv_cache_memory_bytes":
            if value < 1:
                raise UsageError(f"--kv-cache-memory-bytes: must be a positive integer, got {value}")
            value = value / 2**30
        elif f.name == "speculative_config":
            value = _speculative(value)
        section, _, key = FIELDS[f.name][1].rpartition(".")
        (out.setdefault(section, {}) if section else out)[key] = value
    if "num_blocks" in out.get("cache", {}) or "memory_gib" in out.get("cache", {}):  # the flag's sizing wins
        out["cache"].setdefault("num_blocks", None)
        out["cache"].setdefault("memory_gib", None)
    if args.enforce_eager:
        out["cuda_graphs"] = False
    return out


def _speculative(text: str) -> dict[str, Any]:
    """vLLM's --speculative-config JSON as the recipe's speculative section (a `model` alone means draft_model)."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--speculative-config: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--speculative-config: must be a JSON object, got {type(config).__name__}")
    if "model" in config:
        config = {"method": "draft_model", **config, "model": model_mapping(str(config["model"]))}
    return config


def _flag_error(message: str) -> str:
    """A RecipeError about a field a flag set, said of the flag: `--max-num-seqs: must be ...`."""
    _, _, rest = message.partition(": ")
    path, _, what = rest.partition(": ")
    for flag, field in FIELDS.values():
        if path == field:
            return f"{flag}: {what}"
        if path.startswith(field + "."):
            return f"{flag}: {path.removeprefix(field + '.')}: {what}"
    return message
