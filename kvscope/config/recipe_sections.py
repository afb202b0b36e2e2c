"""The sections of a recipe below its top level: cache, scheduler, speculative, deployment, sim, workload (and the
`sampling` mapping, which SamplingParams checks). A rule that needs another section is kvscope.config.recipe's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, ConfigDict, Field, model_validator, with_config
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from kvscope.config.model_spec import ModelSpec
from kvscope.config.recipe_fields import (
    Flag,
    NonNegativeInt,
    OneOf,
    PositiveInt,
    RecipePath,
    Section,
    Text,
    expect,
    number,
)

if TYPE_CHECKING:
    from kvscope.config.recipe_fields import Rules

MAX_WORKLOAD_REQUESTS = 100_000  # every request's prompt is built up front
SpecMethod = Literal["ngram", "layerskip", "draft_model"]
SPEC_METHODS: tuple[str, ...] = get_args(SpecMethod)


class CacheSpec(Section):
    """allocator: paged (blocks anywhere, as vLLM) or contiguous (the baseline: one first-fit max-length range
    of blocks per request, kvscope.engine.core.contiguous_blocks).
    kv_cache: keep each request's K/V from step to step (true: what makes decoding one token per step). false
    is the no-KV-cache baseline (Hugging Face generate with use_cache=False): every step recomputes a request's
    whole prefix, prompt and generated tokens, and its blocks are only the step's scratch; the greedy tokens
    are the same, the work grows with the square of the length."""

    block_size: PositiveInt = 16
    num_blocks: PositiveInt | None = None
    memory_gib: Annotated[float, number(1e-9)] | None = None
    prefix_caching: Flag = False
    allocator: Annotated[Literal["paged", "contiguous"], OneOf()] = "paged"
    kv_cache: Flag = True

    def rules(self) -> Rules:
        return ((self.num_blocks is not None and self.memory_gib is not None, None,
                 "give num_blocks or memory_gib, not both"),
                (self.allocator == "contiguous" and self.prefix_caching, "prefix_caching",
                 "needs the paged allocator: a contiguous range shares no block"),
                (not self.kv_cache and self.prefix_caching, "prefix_caching",
                 "needs kv_cache true: a prefix cache reuses K/V the no-KV-cache baseline never keeps"),
                (not self.kv_cache and self.allocator != "paged", "kv_cache",
                 "false (the no-KV-cache baseline) runs on the paged allocator only"))


class SchedulerSpec(Section):
    policy: Annotated[Literal["continuous", "static"], OneOf()] = "continuous"
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
        num_assistant_tokens heuristic), between 1 and max_speculative_tokens (left out: 4 x k).
    acceptance_rate: a simulated device's acceptance model (`device: sim` needs it; a real device verifies real
        drafts and refuses it): each draft is accepted with this probability, independently, until the first
        rejection, so a verification emits (1 - a^(k+1)) / (1 - a) tokens on average. A real run's summary
        measures it as spec_decode.per_token_acceptance (vLLM's acceptance rate, accepted / drafted tokens, is
        lower: it counts the drafts after a rejection too). The drafts are priced by the method: ngram at no
        cost, layerskip as the target's first num_layers layers, draft_model as `model`'s shape (a preset will
        do: no weights are loaded).
    acceptance_from: the same, measured on the real engine: a `kvscope run --headless --json` summary of a
        speculative run, whose spec_decode.per_token_acceptance becomes the acceptance rate (give one or the
        other).
    """

    method: Annotated[SpecMethod, OneOf()] = Field(description=f"is required: one of {', '.join(SPEC_METHODS)}")
    num_speculative_tokens: PositiveInt = 4
    prompt_lookup_min: PositiveInt = 1
    prompt_lookup_max: PositiveInt = 4
    num_layers: PositiveInt = 0
    model: ModelSpec | None = None
    adaptive: Flag = False
    max_speculative_tokens: PositiveInt = Field(default_factory=lambda v: 4 * v.get("num_speculative_tokens", 4))
    acceptance_rate: Annotated[float, number(0.0, 1.0)] | None = None
    acceptance_from: RecipePath | None = None

    def rules(self) -> Rules:
        lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
        return ((hi < lo, "prompt_lookup_max", f"must be >= prompt_lookup_min ({lo}), got {hi}"),
                (self.method == "layerskip" and "num_layers" not in self.model_fields_set, "num_layers",
                 "layerskip needs the number of the target's layers to draft with"),
                (self.method == "draft_model" and self.model is None, "model",
                 "draft_model needs a model (source, path or shape)"),
                (self.acceptance_rate is not None and self.acceptance_from is not None, "acceptance_from",
                 "give acceptance_rate or acceptance_from, not both"))


class DeploymentSpec(Section):
    """Where prefill and decode run. colocated: one engine does both (the default). disaggregated: `prefill`
    engines run each prompt (max_tokens 1) and pin its blocks; `decode` engines load that K/V into blocks of
    their own and generate the rest (kvscope.engine.disagg.proxy). transport: how the K/V moves: inprocess
    (every engine in this process) or ray (each engine a Ray actor, K/V through the object store).
    transfer_timeout_s: how long a prefill engine keeps a finished prompt's blocks pinned for a decode engine
    that never reads them. cpus_per_engine: a Ray actor's CPUs (and its torch threads). link_gb_s /
    link_latency_us: on a simulated device (engines in this process, virtual clocks) the network link a
    transfer crosses, modelled (kvscope.engine.disagg.sim_link). A colocated deployment ignores the rest."""

    mode: Annotated[Literal["colocated", "disaggregated"], OneOf()] = "colocated"
    prefill: PositiveInt = 1
    decode: PositiveInt = 1
    transport: Annotated[Literal["inprocess", "ray"], OneOf()] = "inprocess"
    transfer_timeout_s: Annotated[float, number(0.001)] = 30.0
    cpus_per_engine: PositiveInt = 1
    link_gb_s: Annotated[float, number(1e-6)] = 50.0  # the modelled link's bandwidth (400 Gb/s InfiniBand)
    link_latency_us: Annotated[float, number(0.0)] = 10.0  # and its latency per transfer

    @property
    def disaggregated(self) -> bool:
        return self.mode == "disaggregated"


class SimSpec(Section):
    """A simulated device (`device: sim`): `num_gpus` x `gpu` (a kvscope.costmodel.devices preset) with
    tensor parallelism `tp` (= num_gpus; either one given sets both), a calibration `profile` (None: the ideal
    roofline) and the share of GPU memory the weights and the KV pool may take."""

    gpu: Text = "H100-80GB"
    num_gpus: PositiveInt = 1
    tp: PositiveInt = 1
    profile: RecipePath | None = None
    mem_util: Annotated[float, number(0.01, 1.0)] = 0.9

    def model_post_init(self, context: Any) -> None:  # tp alone sets num_gpus, num_gpus alone tp
        given = set(self.model_fields_set)
        self.tp, self.num_gpus = (self.tp if "tp" in given else self.num_gpus), (
            self.num_gpus if "num_gpus" in given else self.tp)

    def rules(self) -> Rules:
        return ((self.tp != self.num_gpus, "tp", f"must equal sim.num_gpus ({self.num_gpus}): one engine spans all "
                                                 f"the GPUs (data parallelism is not simulated), got {self.tp}"),)


class LengthSpec(Section):
    """A length distribution: fixed (min == max; an integer when written) or uniform integers in [min, max]."""

    min: PositiveInt
    max: PositiveInt

    @model_validator(mode="before")
    @classmethod
    def _fixed(cls, value: Any) -> Any:
        if isinstance(value, dict) and not {"min", "max"} <= set(value):
            raise ValueError("must be an integer or a mapping with min and max")
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        if value < 1:
            raise ValueError(f"must be a positive integer, got {value}")
        return {"min": value, "max": value}

    def rules(self) -> Rules:
        return ((self.max < self.min, None, f"max ({self.max}) must be >= min ({self.min})"),)


class SyntheticSpec(Section):
    num_requests: Annotated[int, Field(strict=True, gt=0, le=MAX_WORKLOAD_REQUESTS), expect(
        f"a positive integer up to {MAX_WORKLOAD_REQUESTS} (every prompt is built up front)")] = 16
    prompt_len: LengthSpec = Field(default_factory=lambda: LengthSpec(min=64, max=256))
    output_len: LengthSpec = Field(default_factory=lambda: LengthSpec(min=32, max=128))
    arrival_rate: Annotated[float, number(0.0)] = 0.0  # requests per second (Poisson); 0 = all at once
    shared_prefix: NonNegativeInt = 0  # tokens every prompt starts with (prefix-cache experiments)
    seed: NonNegativeInt = 0


@with_config(ConfigDict(extra="forbid"))
class ChatMessage(TypedDict):
    role: Annotated[Literal["system", "user", "assistant"], OneOf()]
    content: Text


def _conversation(value: Any) -> Any:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a string (a user message) or a list of {role, content} messages")
    return value


class WorkloadSpec(Section):
    prompts: Annotated[list[Text], expect("a list of strings")] = []
    chat: Annotated[list[Annotated[list[ChatMessage], BeforeValidator(_conversation)]],
                    expect("a list of conversations")] = []
    synthetic: Annotated[SyntheticSpec | None, BeforeValidator(lambda v: {} if v is None else v)] = None
    repeat: PositiveInt = 1
    arrival_rate: Annotated[float, number(0.0)] = 0.0

    def rules(self) -> Rules:
        n = (len(self.prompts) + len(self.chat)) * self.repeat
        return ((n > MAX_WORKLOAD_REQUESTS, "repeat", f"{n} is more than {MAX_WORKLOAD_REQUESTS}, the most requests "
                                                      "(prompts and chats times repeat) a workload holds"),
                (not (self.prompts or self.chat or self.synthetic), None, "needs prompts, chat or synthetic"))
