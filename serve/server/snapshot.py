"""The state a late joiner starts from, as events: folded into a fresh EngineView (or the TUI's model) they
rebuild what the engine holds now; the event stream then continues from `last_event_id`.

Taken under the engine's lock, so the engine is between steps and the hub's last id matches the state:
RunInfo, then per live request its arrival, its state (scheduled / preempted, first token) and its
blocks (one alloc with the table's blocks, their ref counts and hashes), then the cached free blocks
(hash kept, no holder), then the last KV snapshot.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kvscope.engine.core.request import RequestStatus
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events.codec import event_to_dict
from kvscope.events.records import BlockEvent, RequestEvent
from kvscope.events.vocabulary import ALLOC, ARRIVED, CACHED, FIRST_TOKEN, PREEMPTED, SCHEDULED
from kvscope.serve.server.event_hub import EventHub


def snapshot_events(engine: LLMEngine) -> list[Any]:
    """Events that rebuild the engine's present state from nothing (call with the engine's lock held)."""
    step = engine.step_id  # the step the engine runs next: what its events between steps carry
    now = engine.bus.clock()
    bm = engine.block_manager
    out: list[Any] = [engine.run_info()]
    for rid, req in sorted(engine.requests.items()):
        if req.status is RequestStatus.FINISHED:
            continue
        counts = (req.num_prompt_tokens, req.num_output_tokens, req.num_computed_tokens, req.max_tokens)
        out.append(RequestEvent(req.arrival_ts, step, rid, ARRIVED, req.num_prompt_tokens, 0, 0, req.max_tokens))
        if req.status is RequestStatus.RUNNING:
            out.append(RequestEvent(now, step, rid, SCHEDULED, *counts))
            if req.first_token_ts:
                out.append(RequestEvent(req.first_token_ts, step, rid, FIRST_TOKEN, *counts))
        elif req.status is RequestStatus.PREEMPTED:
            out.append(RequestEvent(now, step, rid, PREEMPTED, *counts))
        if req.block_table:
            blocks = tuple(req.block_table)
            out.append(BlockEvent(now, step, ALLOC, rid, blocks, 0, tuple(bm.ref_counts[b] for b in blocks),
                                  tuple(bm.block_hash[b] for b in blocks)))
    cached = tuple(sorted(bm.cached_block_ids()))
    if cached:
        out.append(BlockEvent(now, step, CACHED, -1, cached, -1, tuple(0 for _ in cached),
                              tuple(bm.block_hash[b] for b in cached)))
    return out


def build_snapshot(engine: LLMEngine, hub: EventHub) -> dict[str, Any]:
    """The /kvscope/v1/snapshot body: `last_event_id` and the `events` that rebuild the state as of it."""
    with engine._lock:
        last_id = hub.last_id
        events = snapshot_events(engine)
        kv = hub.last_kv
    if kv is not None:  # the pool as of the last step, stamped with the snapshot's step (a recording stays in order)
        events.append(replace(kv, step=events[0].step))
    return {"last_event_id": last_id, "step": engine.step_id, "events": [event_to_dict(e) for e in events]}
