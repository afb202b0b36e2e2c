"""Event records: every record carries `ts` (monotonic ns, or a simulated device's virtual clock) and `step`
(the scheduler step it belongs to; -1 before the first step). The engine emits them; recorders, exporters,
metrics and the TUI consume them (kvscope.events.bus carries them, kvscope.events.codec turns them into JSON
objects and back)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kvscope.events.vocabulary import Kind


@dataclass(slots=True)
class RunInfo:
    """The engine's configuration, emitted before the first step of a run (and again after a reset). A field
    that holds a config value has the config's name (ModelConfig's, the recipe's cache and scheduler).

    kv_bytes_per_block: bytes of K and V for one block across all layers.
    """

    kind: ClassVar[str] = Kind.RUN_INFO
    ts: int
    step: int
    model: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    dtype: str
    device: str
    backend: str
    policy: str
    num_blocks: int
    block_size: int
    kv_bytes_per_block: int
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    prefix_caching: bool = False


@dataclass(slots=True)
class StepBegin:
    """A scheduler step starts."""

    kind: ClassVar[str] = Kind.STEP_BEGIN
    ts: int
    step: int


@dataclass(slots=True)
class StepEnd:
    """A scheduler step ends.

    prefill: (request id, prompt tokens computed this step) for each request still in prefill.
    decode: request ids that computed decode tokens this step.
    sampled: (request id, tokens appended to its output this step).
    phases: (name, start ns, end ns) for schedule / prepare / forward / sample.
    num_tokens counts the requests' tokens (of the step's token budget, max_num_batched_tokens); padding_tokens
    the extra ones a padded batch computes.
    """

    kind: ClassVar[str] = Kind.STEP_END
    ts: int
    step: int
    begin_ts: int
    num_tokens: int
    max_num_batched_tokens: int
    prefill: tuple[tuple[int, int], ...] = ()
    decode: tuple[int, ...] = ()
    sampled: tuple[tuple[int, int], ...] = ()
    phases: tuple[tuple[str, int, int], ...] = ()
    num_running: int = 0
    num_waiting: int = 0
    num_preempted: int = 0
    padding_tokens: int = 0  # tokens computed and discarded (the static baseline's padding)


@dataclass(slots=True)
class RequestEvent:
    """A request changes state. `what` is one of REQUEST_KINDS.

    reason: for `finished`, one of "stop", "length", "abort" (by the caller), "error" (its sampling failed); empty
        otherwise.
    prompt_tokens / output_tokens / computed_tokens: the request's counts at that moment.
    max_tokens: the request's output limit (for progress bars and max-length reservations).
    """

    kind: ClassVar[str] = Kind.REQUEST
    ts: int
    step: int
    request_id: int
    what: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    computed_tokens: int = 0
    max_tokens: int = 0
    reason: str = ""


@dataclass(slots=True)
class BlockEvent:
    """Blocks change hands.

    block_ids: physical blocks, in logical order for alloc / prefix_hit / free.
    logical_index: the logical index of block_ids[0] in the request's block table
        (the rest follow consecutively); -1 for evict.
    ref_counts: each block's reference count after the operation.
    hashes: each block's chain hash (0 when not hashed).
    request_id: the request, or -1 for evict.
    """

    kind: ClassVar[str] = Kind.BLOCK
    ts: int
    step: int
    what: str
    request_id: int
    block_ids: tuple[int, ...]
    logical_index: int = 0
    ref_counts: tuple[int, ...] = ()
    hashes: tuple[int, ...] = ()


@dataclass(slots=True)
class KernelEvent:
    """One operator launch inside the forward pass.

    start / end: ns on the same clock as `ts` (host timestamps on CPU; CUDA-event
    times mapped onto the host clock on GPU).
    layer: decoder layer index, or -1 for ops outside the layers (embed, final norm, lm_head, sample).
    shapes: a short human string ("T=70 H=576").
    flops / bytes: from the analytic model (kvscope.costmodel.roofline).
    """

    kind: ClassVar[str] = Kind.KERNEL
    ts: int
    step: int
    op: str
    layer: int
    backend: str
    start: int
    end: int
    shapes: str = ""
    flops: int = 0
    bytes: int = 0


@dataclass(slots=True)
class KVSnapshot:
    """KV pool occupancy after a step.

    used_blocks: blocks referenced by at least one request.
    cached_blocks: unreferenced blocks that still hold a hashed prefix (reusable).
    free_blocks: blocks on the free list that hold nothing useful (excludes cached).
    tokens_stored: token slots written and owned by live requests (shared blocks counted once).
    reserved_empty_slots: slots held by live requests but not yet written (internal fragmentation;
        for the static policy this includes the max-length reservation).
    contiguous_waste_slots: what a contiguous max-length reservation would leave empty for the
        same live requests (sum over requests of max_len - stored tokens).
    """

    kind: ClassVar[str] = Kind.KV
    ts: int
    step: int
    num_blocks: int
    block_size: int
    used_blocks: int
    cached_blocks: int
    free_blocks: int
    tokens_stored: int
    reserved_empty_slots: int
    contiguous_waste_slots: int = 0
    largest_free_run: int = -1  # the contiguous allocator's longest run of free blocks (-1: a paged pool)
    refused_with_memory_free: int = 0  # requests it refused a range while enough blocks were free (so far)


@dataclass(slots=True)
class TokenText:
    """A request's text, as its tokenizer decodes it: the prompt once, on arrival, then the output text that
    each step completed. The engine does not emit these: a probe beside it does (kvscope.cli.text_probe),
    when something shows or records the text (the TUI's token stream, a recording for replay).

    prompt: the whole prompt (on arrival; "" after). text: the output text this step completed ("" on
    arrival; it may lag a token behind while a multi-byte character is incomplete). tokens: the output
    tokens it covers. drafted: the tokens are draft tokens the target accepted (speculative decoding).
    """

    kind: ClassVar[str] = Kind.TEXT
    ts: int
    step: int
    request_id: int
    text: str = ""
    prompt: str = ""
    tokens: int = 0
    drafted: bool = False


@dataclass(slots=True)
class SpecDecode:
    """One request's speculative verification in one step.

    num_draft_slots: draft tokens the scheduler reserved (k); num_draft_tokens: the drafter proposed;
    num_accepted: drafts the target accepted (the step appended num_accepted + 1 tokens, fewer if the
    request stopped inside the run); first_rejected: the position of the first rejected draft, -1 if none.
    draft_ns / verify_ns: the step's draft phase and its forward + sample (shared by the step's requests).
    rolled_back_slots: reserved slots left without a committed token; rolled_back_blocks: blocks freed for it.
    """

    kind: ClassVar[str] = Kind.SPEC
    ts: int
    step: int
    request_id: int
    method: str
    num_draft_slots: int
    num_draft_tokens: int
    num_accepted: int
    first_rejected: int = -1
    draft_ns: int = 0
    verify_ns: int = 0
    rolled_back_slots: int = 0
    rolled_back_blocks: int = 0


@dataclass(slots=True)
class KVTransfer:
    """One request's K/V moved from the engine that prefilled it to the engine that decodes it
    (disaggregation), emitted by the receiving side once the K/V is in its blocks.

    src_engine / dst_engine: engine ids ("prefill-0", "decode-0"); src_request_id / dst_request_id: the
    request's id on each. src_block_ids: the sender's pinned blocks that were read; dst_block_ids: the
    receiver's blocks they landed in (same logical order; blocks a prefix-cache hit already held are not
    moved). num_tokens: tokens whose K/V moved. send_start / send_end: the sender reading its blocks out;
    recv_start / recv_end: the receiver asking for them to their landing in its cache (ns, on the receiver's
    clock; a remote sender's times are shifted by the measured clock offset). transport: "inprocess" or "ray".
    ok: False when the transfer failed (the sender died or had released the blocks); error says why.
    """

    kind: ClassVar[str] = Kind.KV_TRANSFER
    ts: int
    step: int
    transfer_id: str
    src_engine: str
    dst_engine: str
    src_request_id: int
    dst_request_id: int
    src_block_ids: tuple[int, ...]
    dst_block_ids: tuple[int, ...]
    num_tokens: int
    bytes: int
    send_start: int
    send_end: int
    recv_start: int
    recv_end: int
    transport: str
    ok: bool = True
    error: str = ""


Event = (RunInfo | StepBegin | StepEnd | RequestEvent | BlockEvent | KernelEvent | KVSnapshot | TokenText
         | SpecDecode | KVTransfer)
EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (RunInfo, StepBegin, StepEnd, RequestEvent, BlockEvent, KernelEvent, KVSnapshot, TokenText,
                SpecDecode, KVTransfer)
}
