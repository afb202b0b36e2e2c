"""The sections of a recipe below its top level: cache, scheduler, speculative, deployment, sim, workload (and the
`sampling` mapping, which SamplingParams checks). A rule that needs another section is kvscope.config.recipe's.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainValidator, TypeAdapter, model_validator

from kvscope.config.model_spec import ModelSpec
from kvscope.config.recipe_fields import (
    FilePath,
    Flag,
    NonNegativeInt,
    PositiveInt,
    Section,
    Text,
    at_most,
    describe,
    expect,
    fail,
    needed,
    number,
    one_of,
    unknown_key,
)
from kvscope.config.sampling_params import SamplingParams
from kvscope.errors import RequestError

MAX_WORKLOAD_REQUESTS = 100_000  # every request's prompt is built up front
SPEC_METHODS = ("ngram", "layerskip", "draft_model")


class CacheSpec(Section):
    block_size: PositiveInt = 16
    num_blocks: PositiveInt | None = None
    memory_gib: number(1e-9) | None = None
    prefix_caching: Flag = False

    @model_validator(mode="after")
    def _one_size(self) -> CacheSpec:
        if self.num_blocks is not None and self.memory_gib is not None:
            raise fail(None, "give num_blocks or memory_gib, not both")
        return self


class SchedulerSpec(Section):
    policy: one_of("continuous", "static") = "continuous"
    max_num_seqs: PositiveInt = 64
    max_num_batched_tokens: PositiveInt = 512
    chunked_prefill: Flag = True
    max_model_len: PositiveInt = 2048


class SpeculativeSpec(Section):
    """Speculative decoding (vLLM's `speculative_config` names): a drafter proposes up to
    num_speculative_tokens per request and step; the target verifies them in the same step.

    prompt_lookup_min / _max: the n-gram lengths `ngram` matches against the request's own tokens.
    num_layers: the target's first layers `layerskip` drafts with. model: the draft model (`draft_model`).
    adaptive: grow k by 2 after a step that accepted every draft, shrink it by 1 after a rejection (HF's
        num_assistant_tokens heuristic), between 1 and max_speculative_tokens (0 when written: 4 x k).
    """

    method: one_of(*SPEC_METHODS) = Field(description=f"is required: one of {', '.join(SPEC_METHODS)}")
    num_speculative_tokens: PositiveInt = 4
    prompt_lookup_min: PositiveInt = 1
    prompt_lookup_max: PositiveInt = 4
    num_layers: PositiveInt = 0
    model: ModelSpec | None = None
    adaptive: Flag = False
    max_speculative_tokens: PositiveInt = 0

    @model_validator(mode="after")
    def _method_needs(self) -> SpeculativeSpec:
        if self.prompt_lookup_max < self.prompt_lookup_min:
            raise fail("prompt_lookup_max", f"must be >= prompt_lookup_min ({self.prompt_lookup_min}), "
                                            f"got {self.prompt_lookup_max}")
        if self.method == "layerskip" and "num_layers" not in self.model_fields_set:
            raise fail("num_layers", "layerskip needs the number of the target's layers to draft with")
        if self.method == "draft_model" and self.model is None:
            raise fail("model", "draft_model needs a model (source, path or shape)")
        self.max_speculative_tokens = self.max_speculative_tokens or 4 * self.num_speculative_tokens
        return self


class DeploymentSpec(Section):
    """Where prefill and decode run. colocated: one engine does both (the default). disaggregated: `prefill`
    engines run each prompt (max_tokens 1) and pin its blocks; `decode` engines load that K/V into blocks of
    their own and generate the rest (kvscope.engine.disagg.proxy). transport: how the K/V moves: inprocess
    (every engine in this process) or ray (each engine a Ray actor, K/V through the object store).
    transfer_timeout_s: how long a prefill engine keeps a finished prompt's blocks pinned for a decode engine
    that never reads them. cpus_per_engine: a Ray actor's CPUs (and its torch threads). link_gb_s /
    link_latency_us: on a simulated device (engines in this process, virtual clocks) the network link a
    transfer crosses, modelled (kvscope.engine.disagg.sim_link). A colocated deployment ignores the rest."""

    mode: one_of("colocated", "disaggregated") = "colocated"
    prefill: PositiveInt = 1
    decode: PositiveInt = 1
    transport: one_of("inprocess", "ray") = "inprocess"
    transfer_timeout_s: number(0.001) = 30.0
    cpus_per_engine: PositiveInt = 1
    link_gb_s: number(1e-6) = 50.0        # the modelled link's bandwidth (400 Gb/s InfiniBand)
    link_latency_us: number(0.0) = 10.0  # and its latency per transfer

    @property
    def disaggregated(self) -> bool:
        return self.mode == "disaggregated"


class SimSpec(Section):
    """A simulated device (`device: sim`): `num_gpus` x `gpu` (a kvscope.costmodel.devices preset) with
    tensor parallelism `tp` (= num_gpus), a calibration `profile` (None: the ideal roofline) and the share
    of GPU memory the weights and the KV pool may take."""

    gpu: Text = "H100-80GB"
    num_gpus: PositiveInt = 1
    tp: PositiveInt = 1
    profile: FilePath | None = None
    mem_util: number(0.01, 1.0) = 0.9

    @model_validator(mode="after")
    def _one_engine(self) -> SimSpec:
        given = self.model_fields_set
        self.tp = self.tp if "tp" in given else self.num_gpus
        self.num_gpus = self.num_gpus if "num_gpus" in given else self.tp
        if self.tp != self.num_gpus:
            raise fail("tp", f"must equal sim.num_gpus ({self.num_gpus}): one engine spans all the GPUs "
                             f"(data parallelism is not simulated), got {self.tp}")
        return self


def _fixed_length(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise fail(None, f"must be a positive integer, got {value}")
        return {"min": value, "max": value}
    if isinstance(value, dict) and not {"min", "max"} <= set(value):
        raise fail(None, "must be an integer or a mapping with min and max")
    return value


class LengthSpec(Section):
    """A length distribution: fixed (min == max, an integer when written) or uniform integers in [min, max]."""

    min: PositiveInt
    max: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> LengthSpec:
        if self.max < self.min:
            raise fail(None, f"max ({self.max}) must be >= min ({self.min})")
        return self


Length = Annotated[LengthSpec, BeforeValidator(_fixed_length)]


class SyntheticSpec(Section):
    num_requests: PositiveInt = 16
    prompt_len: Length = Field(default_factory=lambda: LengthSpec(min=64, max=256))
    output_len: Length = Field(default_factory=lambda: LengthSpec(min=32, max=128))
    arrival_rate: number(0.0) = 0.0  # requests per second (Poisson); 0 = all at once
    shared_prefix: NonNegativeInt = 0  # tokens every prompt starts with (prefix-cache experiments)
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _bounded(self) -> SyntheticSpec:
        at_most(self.num_requests, MAX_WORKLOAD_REQUESTS, "num_requests",
                "the most requests a workload holds (every prompt is built up front)")
        return self


class ChatMessage(Section):
    role: one_of("system", "user", "assistant") = needed()
    content: Text = needed()


_MESSAGES = TypeAdapter(list[ChatMessage])


def _conversation(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise fail(None, "must be a string (a user message) or a list of {role, content} messages")
    return [m.model_dump() for m in _MESSAGES.validate_python(value)]


class WorkloadSpec(Section):
    prompts: Annotated[list[Text], expect("a list of strings")] = []
    chat: Annotated[list[Annotated[list[dict[str, str]], PlainValidator(_conversation)]],
                    expect("a list of conversations")] = []
    synthetic: Annotated[SyntheticSpec | None, BeforeValidator(lambda v: {} if v is None else v)] = None
    repeat: PositiveInt = 1
    arrival_rate: number(0.0) = 0.0

    @model_validator(mode="after")
    def _some_requests(self) -> WorkloadSpec:
        at_most((len(self.prompts) + len(self.chat)) * self.repeat, MAX_WORKLOAD_REQUESTS, "repeat",
                "the most requests (prompts and chats times repeat) a workload holds")
        if not (self.prompts or self.chat or self.synthetic):
            raise fail(None, "needs prompts, chat or synthetic")
        return self


_SAMPLING_KEYS = [f.name for f in fields(SamplingParams)]


def _sampling(value: Any) -> SamplingParams:
    """The `sampling` mapping as SamplingParams, whose checks name the field."""
    if value is None or isinstance(value, SamplingParams):
        return value or SamplingParams()
    if not isinstance(value, dict):
        raise fail(None, f"must be a mapping, got {describe(value)}")
    for key in value:
        if key not in _SAMPLING_KEYS:
            raise unknown_key(str(key), _SAMPLING_KEYS)
    try:
        return SamplingParams(**value)
    except RequestError as exc:
        field, _, message = str(exc).partition(": ")
        raise fail(field.removeprefix("sampling."), message) from None


Sampling = Annotated[SamplingParams, PlainValidator(_sampling)]


class VariantOverrides(Section):
    """The sections a variant may change (checked when the variant is: it is a recipe too)."""

    model: Any = None
    dtype: Any = None
    device: Any = None
    attention_backend: Any = None
    cache: Any = None
    scheduler: Any = None
    sampling: Any = None
    workload: Any = None
    speculative: Any = None
    sim: Any = None
    deployment: Any = None


class Variant(Section):
    name: Text = needed()
    overrides: VariantOverrides = Field(default_factory=VariantOverrides)


_VARIANTS = TypeAdapter(list[Variant])


def _variants(value: Any) -> list[dict[str, Any]]:
    """Each {name, overrides} as written (a variant is the recipe with its overrides: Recipe.with_overrides)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(None, f"must be a list of {{name, overrides}}, got {describe(value)}")
    return [{"name": v.name, "overrides": v.overrides.model_dump(exclude_unset=True)}
            for v in _VARIANTS.validate_python(value)]


Variants = Annotated[list[dict[str, Any]], PlainValidator(_variants)]
