"""The endpoints `kvscope attach` and `kvscope trace --attach` use.

GET /kvscope/v1/events: SSE of the engine's events (`id:` = the hub's event id, `event:` = the kind,
`data:` = the event as JSON), resumable with the `Last-Event-ID` header (or `?last_event_id=`); kernel
events only with `?kernels=1` (and a server started with --kernel-events). A reader that fell behind the
ring gets one `event: gap` record and the stream ends: it re-reads the snapshot and reconnects from the
snapshot's `last_event_id`.
GET /kvscope/v1/snapshot: kvscope.serve.server.snapshot.build_snapshot, plus the controls' state.
POST /kvscope/v1/control: {"action": "pause" | "resume" | "step" | "delay", "seconds": S}.
With API keys set, all three need one (kvscope.serve.server.auth): only the key holder watches or steers.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from kvscope.events.codec import event_to_dict
from kvscope.events.vocabulary import Kind
from kvscope.serve.server.body import parse_json, read_body
from kvscope.serve.server.errors import ServeError, bad_request
from kvscope.serve.server.snapshot import build_snapshot

if TYPE_CHECKING:
    from kvscope.serve.server.app import ServerState

HEARTBEAT_S = 1.0


def _controls(state: ServerState) -> dict[str, Any]:
    loop = state.engine
    return {"paused": loop.paused, "delay_s": loop.delay_s, "alive": loop.alive, "steps": loop.steps_run}


def add_attach_routes(app: FastAPI, state: ServerState) -> None:
    hub = state.hub

    def watched() -> Any:
        if state.watched is None:
            raise ServeError(501, "attach: this server's engines run as Ray actors, in other processes; "
                                  "`kvscope trace` records such a deployment")
        return state.watched

    @app.get("/kvscope/v1/snapshot")
    async def snapshot() -> dict[str, Any]:
        body = await asyncio.get_running_loop().run_in_executor(None, build_snapshot, watched(), hub)
        body["controls"] = _controls(state)
        return body

    @app.post("/kvscope/v1/control")
    async def control(request: Request) -> dict[str, Any]:
        raw = await read_body(request, state.max_body_bytes)
        data = await state.offload.run(len(raw), parse_json, raw)
        action = data.get("action") if isinstance(data, dict) else None
        loop = state.engine
        if action == "pause":
            loop.pause()
        elif action == "resume":
            loop.resume()
        elif action == "step":
            if not loop.step_once():
                raise bad_request("action: step works only while paused", "action")
        elif action == "delay":
            seconds = data.get("seconds")
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 60:
                raise bad_request(f"seconds: a number from 0 to 60 is needed, got {seconds!r}", "seconds")
            loop.set_delay(seconds)
        else:
            raise bad_request(f"action: expected pause, resume, step or delay, got {action!r}", "action")
        return _controls(state)

    @app.get("/kvscope/v1/events")
    async def events(request: Request) -> StreamingResponse:
        watched()
        return events_response(request, hub)


def events_response(request: Request, hub: Any) -> StreamingResponse:
    """The SSE stream of `hub` after the request's Last-Event-ID (header or ?last_event_id=; none: from now)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        last = hub.last_id
    else:
        try:
            last = int(raw)
        except ValueError:
            raise bad_request(f"Last-Event-ID: expected an event id, got {raw!r}", "Last-Event-ID") from None
    kernels = request.query_params.get("kernels") in ("1", "true", "yes")
    return StreamingResponse(_stream(hub, last, kernels), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _stream(hub: Any, last: int, kernels: bool) -> Any:
    reader = hub.add_reader()
    try:
        yield f": kvscope events after {last}\n\n"
        while True:
            batch = hub.read_after(last)
            if batch.gap:
                yield f"event: gap\ndata: {json.dumps({'after': last, 'first_kept': batch.first_kept})}\n\n"
                return
            if not batch.events:
                reader.ready.clear()
                if hub.last_id > last:
                    continue
                try:
                    await asyncio.wait_for(reader.ready.wait(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    yield ": heartbeat\n\n"
                continue
            parts = []
            for eid, ev in batch.events:
                if ev.kind == Kind.KERNEL and not kernels:
                    continue
                parts.append(f"id: {eid}\nevent: {ev.kind}\ndata: {json.dumps(event_to_dict(ev))}\n\n")
            last = batch.events[-1][0]
            if parts:
                yield "".join(parts)
            else:  # only filtered events: still move the client's resume point
                yield f"id: {last}\n: skipped\n\n"
    finally:
        hub.remove_reader(reader)
