"""A request's state as the engine sees it: tokens, progress, blocks, timing."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from kvscope.config.sampling_params import SamplingParams

if TYPE_CHECKING:
    from kvscope.engine.core.kv_connector import KVTransferParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    WAITING_FOR_REMOTE_KVS = "waiting_for_remote_kvs"  # disaggregation: blocks held, K/V on its way
    PREEMPTED = "preempted"  # back in the waiting queue after losing its blocks (recompute)
    FINISHED = "finished"


@dataclass(slots=True)
class Request:
    """One generation request.

    token_ids holds prompt + output so far; num_computed_tokens counts the leading
    tokens whose K/V are in the cache. The scheduler gives each request "tokens to
    compute this step" (num_tokens - num_computed_tokens, cut to the budget), so a
    prefill chunk, a decode and a recompute after preemption are the same thing.
    """

    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    arrival_ts: int
    token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chain hashes of the leading full blocks
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at the last admission
    first_token_ts: int = 0
    finished_ts: int = 0
    finish_reason: str = ""
    finish_detail: str = ""  # why, for reason "error"
    num_preemptions: int = 0
    generator: torch.Generator | None = None
    # speculative decoding: this step's draft tokens (after token_ids), their draft distributions
    # ([len(spec_token_ids), vocab]; None = a point mass on each draft), and the request's current k
    spec_token_ids: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    num_spec_tokens: int = 0
    # disaggregation (kvscope.engine.core.kv_connector): a producer's request asks for its blocks to be pinned for a
    # decode engine; a consumer's request carries where its prompt's K/V waits (cleared once it has landed)
    do_remote_decode: bool = False
    kv_transfer_params: KVTransferParams | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]


@dataclass(slots=True)
class RequestOutput:
    """What a caller gets back for a finished (or running) request."""

    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    kv_transfer_params: KVTransferParams | None = None  # a prefill engine's pinned K/V for a decode engine
    finish_detail: str = ""  # why, when finish_reason is "error"
