"""Recipes: the YAML that names a model, a cache, a scheduler, a workload and sampling.

`load_recipe(path)` parses and validates; every problem becomes one RecipeError
line naming the file and the field path (`cache.block_size: must be a positive
integer, got -4`), with the closest known name suggested for an unknown key.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvscope.config.model_presets import get_preset, preset_names
from kvscope.config.sampling_params import SamplingParams
from kvscope.errors import ModelShapeError, RecipeError

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "auto", "sim")
BACKENDS = ("torch", "triton", "auto")
POLICIES = ("continuous", "static")
MAX_WORKLOAD_REQUESTS = 100_000  # every request's prompt is built up front
MODEL_SOURCES = ("random", "gguf", "hf", "preset")


@dataclass(slots=True)
class ModelSpec:
    """source preset: a published shape by name (kvscope.config.model_presets), for `device: sim` only."""

    source: str = "gguf"
    path: str = "smollm2"
    shape: str = "tiny"
    seed: int = 0
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The loader's spec: only the keys that matter for this source."""
        if self.source == "random":
            return {"source": "random", "shape": self.shape, "seed": self.seed}
        if self.source == "preset":
            return {"source": "preset", "name": self.name}
        return {"source": self.source, "path": self.path}


@dataclass(slots=True)
class SimSpec:
    """A simulated device (`device: sim`): `num_gpus` x `gpu` (a kvscope.costmodel.devices preset) with
    tensor parallelism `tp` (= num_gpus), a calibration `profile` (None: the ideal roofline) and the share
    of GPU memory the weights and the KV pool may take."""

    gpu: str = "H100-80GB"
    num_gpus: int = 1
    tp: int = 1
    profile: str | None = None
    mem_util: float = 0.9


@dataclass(slots=True)
class CacheSpec:
    block_size: int = 16
    num_blocks: int | None = None
    memory_gib: float | None = None
    prefix_caching: bool = False


@dataclass(slots=True)
class SchedulerSpec:
    policy: str = "continuous"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    chunked_prefill: bool = True
    max_model_len: int = 2048


SPEC_METHODS = ("ngram", "layerskip", "draft_model")


@dataclass(slots=True)
class SpeculativeSpec:
    """Speculative decoding (vLLM's `speculative_config` names): a drafter proposes up to
    num_speculative_tokens per request and step; the target verifies them in the same step.

    prompt_lookup_min / _max: the n-gram lengths `ngram` matches against the request's own tokens.
    num_layers: the target's first layers `layerskip` drafts with. model: the draft model (`draft_model`).
    adaptive: grow k by 2 after a step that accepted every draft, shrink it by 1 after a rejection (HF's
        num_assistant_tokens heuristic), between 1 and max_speculative_tokens.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 4
    num_layers: int = 0
    model: ModelSpec | None = None
    adaptive: bool = False
    max_speculative_tokens: int = 0  # 0: 4 x num_speculative_tokens


DEPLOYMENT_MODES = ("colocated", "disaggregated")
TRANSPORTS = ("inprocess", "ray")


@dataclass(slots=True)
class DeploymentSpec:
    """Where prefill and decode run. colocated: one engine does both (the default). disaggregated: `prefill`
    engines run each prompt (max_tokens 1) and pin its blocks; `decode` engines load that K/V into blocks of
    their own and generate the rest (kvscope.engine.disagg.proxy). transport: how the K/V moves: inprocess
    (every engine in this process) or ray (each engine a Ray actor, K/V through the object store).
    transfer_timeout_s: how long a prefill engine keeps a finished prompt's blocks pinned for a decode engine
    that never reads them. cpus_per_engine: a Ray actor's CPUs (and its torch threads). link_gb_s /
    link_latency_us: on a simulated device (engines in this process, virtual clocks) the network link a
    transfer crosses, modelled (kvscope.engine.disagg.sim_link)."""

    mode: str = "colocated"
    prefill: int = 1
    decode: int = 1
    transport: str = "inprocess"
    transfer_timeout_s: float = 30.0
    cpus_per_engine: int = 1
    link_gb_s: float = 50.0        # simulated engines: the modelled link's bandwidth (400 Gb/s InfiniBand)
    link_latency_us: float = 10.0  # and its latency per transfer

    @property
    def disaggregated(self) -> bool:
        return self.mode == "disaggregated"


@dataclass(slots=True)
class LengthSpec:
    """A length distribution: fixed (min == max) or uniform integers in [min, max]."""

    min: int
    max: int


@dataclass(slots=True)
class SyntheticSpec:
    num_requests: int = 16
    prompt_len: LengthSpec = field(default_factory=lambda: LengthSpec(64, 256))
    output_len: LengthSpec = field(default_factory=lambda: LengthSpec(32, 128))
    arrival_rate: float = 0.0  # requests per second (Poisson); 0 = all at once
    shared_prefix: int = 0  # tokens every prompt starts with (prefix-cache experiments)
    seed: int = 0


@dataclass(slots=True)
class WorkloadSpec:
    prompts: list[str] = field(default_factory=list)
    chat: list[list[dict[str, str]]] = field(default_factory=list)
    synthetic: SyntheticSpec | None = None
    repeat: int = 1
    arrival_rate: float = 0.0


@dataclass(slots=True)
class Recipe:
    name: str = "recipe"
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    dtype: str = "float32"
    device: str = "cpu"
    attention_backend: str = "auto"
    cuda_graphs: bool = False  # decode steps replayed as CUDA graphs (kvscope.engine.worker.cuda_graphs): CUDA + triton
    cache: CacheSpec = field(default_factory=CacheSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    speculative: SpeculativeSpec | None = None
    deployment: DeploymentSpec = field(default_factory=DeploymentSpec)
    variants: list[dict[str, Any]] = field(default_factory=list)
    sim: SimSpec | None = None  # set exactly when device is "sim"
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Recipe:
        return _Validator(source).recipe(data)

    def with_overrides(self, overrides: dict[str, Any], name: str | None = None) -> Recipe:
        """A new recipe: this one's raw dict deep-merged with `overrides` (variants use this)."""
        merged = _deep_merge(copy.deepcopy(self.raw), overrides)
        merged.pop("variants", None)
        if name:
            merged["name"] = name
        return Recipe.from_dict(merged, source=self.source)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (RecipeError on any problem)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: no such recipe file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{p}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{p}: malformed YAML: {where}{problem}") from None
    if data is None:
        data = {}
    return Recipe.from_dict(data, source=str(p))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class _Validator:
    """Turns a plain dict into the Recipe dataclass tree, one field path at a time."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> RecipeError:
        return RecipeError(f"{self.source}: {path}: {message}")

    # --- primitives -------------------------------------------------------------------
    def mapping(self, value: Any, path: str, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path or "recipe", f"must be a mapping, got {_describe(value)}")
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
                raise self.fail(_join(path, str(key)), f"unknown key{hint}")
        return value

    def pos_int(self, value: Any, path: str, allow_zero: bool = False) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
        if not ok:
            what = "a non-negative integer" if allow_zero else "a positive integer"
            raise self.fail(path, f"must be {what}, got {_describe(value)}")
        return value

    def number(self, value: Any, path: str, lo: float, hi: float | None = None) -> float:
        not_a_number = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        if not_a_number or value < lo or (hi is not None and value > hi):
            rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise self.fail(path, f"must be a finite number {rng}, got {_describe(value)}")
        return float(value)

    def at_most(self, value: int, limit: int, path: str, what: str) -> int:
        if value > limit:
            raise self.fail(path, f"{value} is more than {limit}, {what}")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {_describe(value)}")
        return value

    def choice(self, value: Any, path: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(path, f"must be one of {', '.join(options)}, got {_describe(value)}")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_describe(value)}")
        return value

    def str_list(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of strings, got {_describe(value)}")
        return [self.string(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def beside_recipe(self, path: str) -> str:
        """A relative file path that does not exist from here but does beside the recipe file: that one."""
        p = Path(path)
        if self.source == "<dict>" or p.is_absolute() or p.exists():
            return path
        alt = Path(self.source).parent / p
        return str(alt) if alt.exists() else path

    # --- sections ---------------------------------------------------------------------
    def recipe(self, data: Any) -> Recipe:
        known = ("name", "description", "model", "dtype", "device", "attention_backend", "cuda_graphs", "cache",
                 "scheduler", "sampling", "workload", "speculative", "variants", "sim", "deployment")
        d = self.mapping(data, "", known)
        r = Recipe(source=self.source, raw=copy.deepcopy(d))
        if "name" in d:
            r.name = self.string(d["name"], "name")
        elif self.source != "<dict>":
            r.name = Path(self.source).stem
        if "description" in d:
            r.description = self.string(d["description"], "description")
        r.model = self.model(d.get("model"))
        r.dtype = self.choice(d.get("dtype", r.dtype), "dtype", DTYPES)
        r.device = self.choice(d.get("device", r.device), "device", DEVICES)
        r.attention_backend = self.choice(d.get("attention_backend", r.attention_backend), "attention_backend",
                                          BACKENDS)
        r.cuda_graphs = self.boolean(d.get("cuda_graphs", False), "cuda_graphs")
        if r.cuda_graphs and (r.device in ("cpu", "sim") or r.attention_backend == "torch"):
            raise self.fail("cuda_graphs", f"needs device cuda (or auto, on a GPU) and the triton attention backend; "
                                           f"this recipe has device {r.device}, attention_backend "
                                           f"{r.attention_backend}")
        if r.device == "sim":
            r.sim = self.sim(d.get("sim"))
        elif "sim" in d:
            raise self.fail("sim", f"only a simulated device reads it (device: sim), but device is {r.device}")
        elif r.model.source == "preset":
            raise self.fail("model.source", "a preset has no weights: it runs on a simulated device only "
                                            "(device: sim), or use source: random with shape")
        r.cache = self.cache(d.get("cache"))
        r.scheduler = self.scheduler(d.get("scheduler"))
        r.sampling = self.sampling(d.get("sampling"), "sampling")
        r.workload = self.workload(d.get("workload"), r.scheduler.max_model_len)
        if d.get("speculative") is not None:
            r.speculative = self.speculative(d["speculative"])
            if r.scheduler.policy == "static":
                raise self.fail("speculative", "needs scheduler.policy continuous (the static baseline has no drafts)")
            if r.device == "sim":
                raise self.fail("speculative", "is not simulated yet: a simulated device has no draft tokens to "
                                               "verify (drop speculative, or run on cpu / cuda)")
        r.deployment = self.deployment(d.get("deployment"))
        if r.deployment.disaggregated:
            for what, bad in (("scheduler.policy static", r.scheduler.policy == "static"),
                              ("speculative", r.speculative is not None),
                              ("device: sim over transport ray (simulated engines run in this process)",
                               r.device == "sim" and r.deployment.transport == "ray")):
                if bad:
                    raise self.fail("deployment.mode", f"disaggregated does not combine with {what} yet")
        r.variants = self.variants(d.get("variants"))
        if r.cache.block_size * (r.cache.num_blocks or 1) < 1:
            raise self.fail("cache", "pool must hold at least one token")
        for v in r.variants:  # a variant is a recipe too: check it now, not when bench runs it
            try:
                r.with_overrides(v["overrides"])
            except RecipeError as exc:
                raise RecipeError(f"{exc} (in variant {v['name']!r})") from None
        return r

    def model(self, value: Any, path: str = "model") -> ModelSpec:
        d = self.mapping(value, path, ("source", "path", "shape", "seed", "name"))
        m = ModelSpec()
        m.source = self.choice(d.get("source", m.source), f"{path}.source", MODEL_SOURCES)
        if m.source == "preset":
            if "name" not in d:
                raise self.fail(f"{path}.name", "a preset model needs a name (e.g. llama-3.1-70b)")
            m.name = self.string(d["name"], f"{path}.name")
            try:
                get_preset(m.name)
            except ModelShapeError:
                raise self.fail(f"{path}.name", f"unknown model {m.name!r} (presets: {', '.join(preset_names())})"
                                ) from None
        elif "name" in d:
            raise self.fail(f"{path}.name", f"only a preset model takes a name (source: preset), not {m.source}")
        if "path" in d:
            m.path = self.string(d["path"], f"{path}.path")
            if m.source != "random" and m.path != "smollm2":
                m.path = self.beside_recipe(m.path)
        if "shape" in d:
            m.shape = self.string(d["shape"], f"{path}.shape")
        if "seed" in d:
            m.seed = self.pos_int(d["seed"], f"{path}.seed", allow_zero=True)
        if m.source == "hf" and "path" not in d:
            raise self.fail(f"{path}.path", "a Hugging Face folder needs a path")
        return m

    def speculative(self, value: Any) -> SpeculativeSpec:
        known = ("method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max", "num_layers",
                 "model", "adaptive", "max_speculative_tokens")
        d = self.mapping(value, "speculative", known)
        s = SpeculativeSpec()
        if "method" not in d:
            raise self.fail("speculative.method", f"is required: one of {', '.join(SPEC_METHODS)}")
        s.method = self.choice(d["method"], "speculative.method", SPEC_METHODS)
        for key in ("num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max", "num_layers"):
            if key in d:
                setattr(s, key, self.pos_int(d[key], f"speculative.{key}"))
        if "max_speculative_tokens" in d:
            s.max_speculative_tokens = self.pos_int(d["max_speculative_tokens"], "speculative.max_speculative_tokens")
        if "adaptive" in d:
            s.adaptive = self.boolean(d["adaptive"], "speculative.adaptive")
        if s.prompt_lookup_max < s.prompt_lookup_min:
            raise self.fail("speculative.prompt_lookup_max",
                            f"must be >= prompt_lookup_min ({s.prompt_lookup_min}), got {s.prompt_lookup_max}")
        if s.method == "layerskip" and "num_layers" not in d:
            raise self.fail("speculative.num_layers", "layerskip needs the number of the target's layers to draft with")
        if s.method == "draft_model":
            if "model" not in d:
                raise self.fail("speculative.model", "draft_model needs a model (source, path or shape)")
            s.model = self.model(d["model"], "speculative.model")
        if not s.max_speculative_tokens:
            s.max_speculative_tokens = 4 * s.num_speculative_tokens
        return s

    def deployment(self, value: Any) -> DeploymentSpec:
        known = ("mode", "prefill", "decode", "transport", "transfer_timeout_s", "cpus_per_engine", "link_gb_s",
                 "link_latency_us")
        d = self.mapping(value if value is not None else {}, "deployment", known)
        s = DeploymentSpec()
        s.mode = self.choice(d.get("mode", s.mode), "deployment.mode", DEPLOYMENT_MODES)
        s.transport = self.choice(d.get("transport", s.transport), "deployment.transport", TRANSPORTS)
        for key in ("prefill", "decode", "cpus_per_engine"):
            if key in d:
                setattr(s, key, self.pos_int(d[key], f"deployment.{key}"))
        if "transfer_timeout_s" in d:
            s.transfer_timeout_s = self.number(d["transfer_timeout_s"], "deployment.transfer_timeout_s", 0.001)
        if "link_gb_s" in d:
            s.link_gb_s = self.number(d["link_gb_s"], "deployment.link_gb_s", 1e-6)
        if "link_latency_us" in d:
            s.link_latency_us = self.number(d["link_latency_us"], "deployment.link_latency_us", 0.0)
        return s  # a colocated deployment ignores the rest (so a variant can switch the mode alone)

    def sim(self, value: Any) -> SimSpec:
        d = self.mapping(value, "sim", ("gpu", "num_gpus", "tp", "profile", "mem_util"))
        s = SimSpec()
        if "gpu" in d:
            s.gpu = self.string(d["gpu"], "sim.gpu")
        if "num_gpus" in d:
            s.num_gpus = self.pos_int(d["num_gpus"], "sim.num_gpus")
        s.tp = self.pos_int(d["tp"], "sim.tp") if "tp" in d else s.num_gpus
        if "num_gpus" not in d:
            s.num_gpus = s.tp
        if s.tp != s.num_gpus:
            raise self.fail("sim.tp", f"must equal sim.num_gpus ({s.num_gpus}): one engine spans all the GPUs "
                                      f"(data parallelism is not simulated), got {s.tp}")
        if d.get("profile") is not None:
            s.profile = self.beside_recipe(self.string(d["profile"], "sim.profile"))
        if "mem_util" in d:
            s.mem_util = self.number(d["mem_util"], "sim.mem_util", 0.01, 1.0)
        return s

    def cache(self, value: Any) -> CacheSpec:
        d = self.mapping(value, "cache", ("block_size", "num_blocks", "memory_gib", "prefix_caching"))
        c = CacheSpec()
        if "block_size" in d:
            c.block_size = self.pos_int(d["block_size"], "cache.block_size")
        if "num_blocks" in d and "memory_gib" in d:
            raise self.fail("cache", "give num_blocks or memory_gib, not both")
        if "num_blocks" in d:
            c.num_blocks = self.pos_int(d["num_blocks"], "cache.num_blocks")
        if "memory_gib" in d:
            c.memory_gib = self.number(d["memory_gib"], "cache.memory_gib", 1e-9)
        if "prefix_caching" in d:
            c.prefix_caching = self.boolean(d["prefix_caching"], "cache.prefix_caching")
        return c

    def scheduler(self, value: Any) -> SchedulerSpec:
        known = ("policy", "max_num_seqs", "max_num_batched_tokens", "chunked_prefill", "max_model_len")
        d = self.mapping(value, "scheduler", known)
        s = SchedulerSpec()
        if "policy" in d:
            s.policy = self.choice(d["policy"], "scheduler.policy", POLICIES)
        for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if key in d:
                setattr(s, key, self.pos_int(d[key], f"scheduler.{key}"))
        if "chunked_prefill" in d:
            s.chunked_prefill = self.boolean(d["chunked_prefill"], "scheduler.chunked_prefill")
        return s

    def sampling(self, value: Any, path: str) -> SamplingParams:
        known = ("temperature", "top_k", "top_p", "max_tokens", "seed", "stop", "stop_token_ids", "ignore_eos")
        d = self.mapping(value, path, known)
        s = SamplingParams()
        if "temperature" in d:
            s.temperature = self.number(d["temperature"], f"{path}.temperature", 0.0)
        if "top_k" in d:
            s.top_k = self.pos_int(d["top_k"], f"{path}.top_k", allow_zero=True)
        if "top_p" in d:
            s.top_p = self.number(d["top_p"], f"{path}.top_p", 0.0, 1.0)
            if s.top_p == 0.0:
                raise self.fail(f"{path}.top_p", "must be a number between 0 (exclusive) and 1, got 0")
        if "max_tokens" in d:
            s.max_tokens = self.pos_int(d["max_tokens"], f"{path}.max_tokens")
        if d.get("seed") is not None:
            s.seed = self.pos_int(d["seed"], f"{path}.seed", allow_zero=True)
        if "stop" in d:
            stop = d["stop"]
            where = f"{path}.stop"
            s.stop = [self.string(stop, where)] if isinstance(stop, str) else self.str_list(stop, where)
        if "stop_token_ids" in d:
            ids = d["stop_token_ids"]
            if not isinstance(ids, list):
                raise self.fail(f"{path}.stop_token_ids", f"must be a list of token ids, got {_describe(ids)}")
            s.stop_token_ids = [self.pos_int(t, f"{path}.stop_token_ids[{i}]", allow_zero=True)
                                for i, t in enumerate(ids)]
        if "ignore_eos" in d:
            s.ignore_eos = self.boolean(d["ignore_eos"], f"{path}.ignore_eos")
        return s

    def length(self, value: Any, path: str) -> LengthSpec:
        if isinstance(value, int) and not isinstance(value, bool):
            n = self.pos_int(value, path)
            return LengthSpec(n, n)
        d = self.mapping(value, path, ("min", "max"))
        if "min" not in d or "max" not in d:
            raise self.fail(path, "must be an integer or a mapping with min and max")
        lo = self.pos_int(d["min"], f"{path}.min")
        hi = self.pos_int(d["max"], f"{path}.max")
        if hi < lo:
            raise self.fail(path, f"max ({hi}) must be >= min ({lo})")
        return LengthSpec(lo, hi)

    def synthetic(self, value: Any, path: str, max_model_len: int) -> SyntheticSpec:
        known = ("num_requests", "prompt_len", "output_len", "arrival_rate", "shared_prefix", "seed")
        d = self.mapping(value, path, known)
        s = SyntheticSpec()
        if "num_requests" in d:
            s.num_requests = self.at_most(self.pos_int(d["num_requests"], f"{path}.num_requests"),
                                          MAX_WORKLOAD_REQUESTS, f"{path}.num_requests",
                                          "the most requests a workload holds (every prompt is built up front)")
        if "prompt_len" in d:
            s.prompt_len = self.length(d["prompt_len"], f"{path}.prompt_len")
            self.at_most(s.prompt_len.max, max_model_len - 1, f"{path}.prompt_len",
                         f"the longest prompt scheduler.max_model_len {max_model_len} leaves room to generate after")
        if "output_len" in d:
            s.output_len = self.length(d["output_len"], f"{path}.output_len")
        if "arrival_rate" in d:
            s.arrival_rate = self.number(d["arrival_rate"], f"{path}.arrival_rate", 0.0)
        if "shared_prefix" in d:
            s.shared_prefix = self.at_most(self.pos_int(d["shared_prefix"], f"{path}.shared_prefix", allow_zero=True),
                                           max_model_len - 2, f"{path}.shared_prefix",
                                           f"the longest shared prefix scheduler.max_model_len {max_model_len} allows")
        if "seed" in d:
            s.seed = self.pos_int(d["seed"], f"{path}.seed", allow_zero=True)
        return s

    def workload(self, value: Any, max_model_len: int) -> WorkloadSpec:
        d = self.mapping(value, "workload", ("prompts", "chat", "synthetic", "repeat", "arrival_rate"))
        w = WorkloadSpec()
        if "prompts" in d:
            w.prompts = self.str_list(d["prompts"], "workload.prompts")
        if "chat" in d:
            w.chat = self.chat(d["chat"], "workload.chat")
        if "synthetic" in d:
            w.synthetic = self.synthetic(d["synthetic"], "workload.synthetic", max_model_len)
        if "repeat" in d:
            w.repeat = self.pos_int(d["repeat"], "workload.repeat")
            self.at_most((len(w.prompts) + len(w.chat)) * w.repeat, MAX_WORKLOAD_REQUESTS, "workload.repeat",
                         "the most requests (prompts and chats times repeat) a workload holds")
        if "arrival_rate" in d:
            w.arrival_rate = self.number(d["arrival_rate"], "workload.arrival_rate", 0.0)
        if not (w.prompts or w.chat or w.synthetic):
            raise self.fail("workload", "needs prompts, chat or synthetic")
        return w

    def chat(self, value: Any, path: str) -> list[list[dict[str, str]]]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of conversations, got {_describe(value)}")
        out = []
        for i, conv in enumerate(value):
            p = f"{path}[{i}]"
            if isinstance(conv, str):
                out.append([{"role": "user", "content": conv}])
                continue
            if not isinstance(conv, list) or not conv:
                raise self.fail(p, "must be a string (a user message) or a list of {role, content} messages")
            msgs = []
            for j, m in enumerate(conv):
                mp = f"{p}[{j}]"
                md = self.mapping(m, mp, ("role", "content"))
                role = self.choice(md.get("role"), f"{mp}.role", ("system", "user", "assistant"))
                msgs.append({"role": role, "content": self.string(md.get("content"), f"{mp}.content")})
            out.append(msgs)
        return out

    def variants(self, value: Any) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail("variants", f"must be a list of {{name, overrides}}, got {_describe(value)}")
        out = []
        for i, v in enumerate(value):
            d = self.mapping(v, f"variants[{i}]", ("name", "overrides"))
            name = self.string(d.get("name"), f"variants[{i}].name")
            over = self.mapping(d.get("overrides", {}), f"variants[{i}].overrides",
                                ("model", "dtype", "device", "attention_backend", "cache", "scheduler",
                                 "sampling", "workload", "speculative", "sim", "deployment"))
            out.append({"name": name, "overrides": over})
        return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return repr(value)
