"""The event vocabulary: what a record's `kind` says, the phases of a step, the live ranges' categories, and
the words request and block events use (`RequestEvent.what`, `BlockEvent.what`)."""

from __future__ import annotations


class Kind:
    """What each record's `kind` says (the JSONL `kind` field, and a consumer's `on_<kind>` handler)."""

    RUN_INFO = "run_info"
    STEP_BEGIN = "step_begin"
    STEP_END = "step_end"
    REQUEST = "request"
    BLOCK = "block"
    KERNEL = "kernel"
    KV = "kv"
    TEXT = "text"
    SPEC = "spec_decode"
    KV_TRANSFER = "kv_transfer"


class Phase:
    """The phases of a scheduler step, in order (StepEnd.phases, live ranges, trace slices)."""

    SCHEDULE = "schedule"
    DRAFT = "draft"      # speculative decoding: the drafter proposes tokens (only in steps that draft)
    PREPARE = "prepare"
    FORWARD = "forward"
    SAMPLE = "sample"    # with drafts: verification (greedy match or rejection sampling)
    KV_LOAD = "kv_load"  # disaggregation: the K/V of prompts prefilled elsewhere land in this engine's blocks
    ORDER = (SCHEDULE, KV_LOAD, DRAFT, PREPARE, FORWARD, SAMPLE)


class RangeCategory:
    """Categories of the live ranges (NVTX) the engine pushes: the step, its phases, its ops."""

    STEP = "step"
    PHASE = "phase"
    KERNEL = "kernel"


# request lifecycle kinds
ARRIVED = "arrived"
SCHEDULED = "scheduled"
FIRST_TOKEN = "first_token"
PREEMPTED = "preempted"
RESUMED = "resumed"
FINISHED = "finished"
REQUEST_KINDS = (ARRIVED, SCHEDULED, FIRST_TOKEN, PREEMPTED, RESUMED, FINISHED)

# block event kinds
ALLOC = "alloc"          # blocks taken from the free pool by a request (ref count becomes 1)
PREFIX_HIT = "prefix_hit"  # a request shares already-computed blocks found by hash (ref count + 1)
CACHED = "cached"        # a full block of a request is registered under its chain hash
FREE = "free"            # a request releases blocks (ref count - 1; at 0 a hashed block stays cached)
EVICT = "evict"          # a cached, unreferenced block loses its hash to be reused
SPEC_ALLOC = "spec_alloc"        # blocks taken for a step's draft tokens only (speculative decoding)
SPEC_ROLLBACK = "spec_rollback"  # a request's tail blocks that hold no committed token after verification
KV_PIN = "kv_pin"                # a finished request's blocks held for a KV transfer (disaggregation) until
                                 # the other side acknowledges or a timeout; a `free` releases them
KV_LOAD_ALLOC = "kv_load_alloc"  # blocks taken for K/V that another engine computed (disaggregation)
BLOCK_KINDS = (ALLOC, PREFIX_HIT, CACHED, FREE, EVICT, SPEC_ALLOC, SPEC_ROLLBACK, KV_PIN, KV_LOAD_ALLOC)
