"""The routes the endpoint plugin adds to vLLM's API server, in `kvscope serve`'s forms (so `kvscope attach`,
`trace --attach` and `replay` work on vLLM unchanged):

GET  /kvscope/v1/snapshot  the events that rebuild the relay's view (RunInfo, live requests and their block
                           tables, cached blocks, the last KV snapshot; the StepBegin of a step in flight, so
                           the stream that follows ends it), `last_event_id`, and `controls`
GET  /kvscope/v1/events    the SSE stream (Last-Event-ID, bounded ring, `gap` records): kvscope serve's own
POST /kvscope/v1/control   501: vLLM's engine core runs its own loop, and pausing it between steps from
                           outside is not something vLLM offers without reaching into its busy loop
vLLM's `--api-key` guards these like its own routes only under /v1; they are read-only but for control.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kvscope.events.codec import event_to_dict
from kvscope.events.records import BlockEvent, RequestEvent
from kvscope.events.vocabulary import ALLOC, ARRIVED, CACHED, FIRST_TOKEN, PREEMPTED, SCHEDULED
from kvscope.inspector.state import FINISHED_STATUS, PREEMPTED_STATUS, RUNNING, EngineView
from kvscope.integrations.vllm.transport import EventRelay
from kvscope.serve.server.attach_routes import events_response
from kvscope.serve.server.errors import ServeError, error_body

CONTROLS = {"paused": False, "delay_s": 0.0, "alive": True, "steps": 0, "controllable": False}


def view_snapshot_events(view: EngineView) -> list[Any]:
    """Events that rebuild `view` from nothing: what kvscope serve's snapshot gives, read off the view."""
    if view.info is None:
        return []
    step = max(view.step, 0)
    ts = view.last_step.ts if view.last_step else view.info.ts
    out: list[Any] = [replace(view.info, step=step)]
    for rid, req in sorted(view.requests.items()):
        if req.status == FINISHED_STATUS:
            continue
        counts = (req.prompt_tokens, req.output_tokens, req.computed_tokens, req.max_tokens)
        out.append(RequestEvent(req.arrived_ts, step, rid, ARRIVED, req.prompt_tokens, 0, 0, req.max_tokens))
        if req.status == RUNNING:
            out.append(RequestEvent(ts, step, rid, SCHEDULED, *counts))
            if req.first_token_ts is not None:
                out.append(RequestEvent(req.first_token_ts, step, rid, FIRST_TOKEN, *counts))
        elif req.status == PREEMPTED_STATUS:
            out.append(RequestEvent(ts, step, rid, PREEMPTED, *counts))
        table = view.tables.get(rid)
        if table:
            blocks = tuple(table)
            out.append(BlockEvent(ts, step, ALLOC, rid, blocks, 0, tuple(view.block_refs[b] for b in blocks),
                                  tuple(view.block_hash[b] for b in blocks)))
    cached = tuple(b for b, h in enumerate(view.block_hash) if h and view.block_refs[b] == 0)
    if cached:
        out.append(BlockEvent(ts, step, CACHED, -1, cached, -1, tuple(0 for _ in cached),
                              tuple(view.block_hash[b] for b in cached)))
    if view.last_kv is not None:
        out.append(replace(view.last_kv, step=step))
    return out


def add_kvscope_routes(app: FastAPI, relay: EventRelay) -> None:
    @app.get("/kvscope/v1/snapshot")
    async def snapshot() -> dict[str, Any]:
        with relay.lock:
            last_id = relay.hub.last_id
            events = view_snapshot_events(relay.view)
            if relay.open_step is not None and events:  # taken mid-step: the stream goes on with its end
                events.append(relay.open_step)
            step = relay.view.step
        return {"last_event_id": last_id, "step": max(step, 0), "events": [event_to_dict(e) for e in events],
                "controls": {**CONTROLS, "steps": max(step + 1, 0)}}

    @app.get("/kvscope/v1/events", response_model=None)
    async def events(request: Request) -> Response:
        try:
            return events_response(request, relay.hub)
        except ServeError as e:
            return JSONResponse(e.body(), status_code=e.status)

    @app.post("/kvscope/v1/control")
    async def control() -> JSONResponse:
        return JSONResponse(error_body(501, "control: a vLLM server's engine core runs its own loop; kvscope "
                                            "watches it but does not pause or step it"), status_code=501)
