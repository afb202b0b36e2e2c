"""The headless run: the workload to the end, then the outputs and the metrics summary (text or JSON)."""

from __future__ import annotations

import json
import sys

from kvscope.cli.recipe_args import recipe_header
from kvscope.engine.recipe import Recipe
from kvscope.engine.session import RunSession
from kvscope.inspector.events import EventBus
from kvscope.inspector.metrics import Metrics
from kvscope.inspector.nvtx_ranges import nvtx_range_hook
from kvscope.inspector.recording import attach_recorder


def run_headless(recipe: Recipe, as_json: bool = False, record: str | None = None,
                 show_outputs: bool | None = None, nvtx: bool = True) -> int:
    bus = EventBus()
    metrics = bus.subscribe(Metrics())
    session = RunSession(recipe, bus=bus, range_hook=nvtx_range_hook() if nvtx else None)
    closer = None
    if record:
        closer = attach_recorder(bus, record, recipe_header(recipe, str(session.engine.device)))
    try:
        session.run()
    finally:
        if closer is not None:
            closer()
    for line in session.rejected:
        print(f"kvscope: error: {line}", file=sys.stderr)
    summary = metrics.summary()
    if as_json:
        data = summary.to_dict()
        data["recipe"] = recipe.name
        data["outputs"] = [{"request_id": o.request_id, "text": o.text, "finish_reason": o.finish_reason,
                            "tokens": len(o.token_ids)} for o in sorted(session.outputs.values(),
                                                                       key=lambda o: o.request_id)]
        print(json.dumps(data))
    else:
        if show_outputs is None:
            show_outputs = not recipe.workload.synthetic
        if show_outputs:
            print_outputs(session)
        print(f"recipe: {recipe.name} ({recipe.source})  model: {session.engine.config.name}  "
              f"device: {session.engine.device}  backend: {session.engine.backend_name}")
        print(summary.format_text())
    return 2 if session.rejected else 0


def print_outputs(session: RunSession) -> None:
    tok = session.tokenizer
    for rid in session.request_ids:
        out = session.outputs.get(rid)
        if out is None:
            continue
        prompt = tok.decode(out.prompt_token_ids).strip().replace("\n", " ")
        if len(prompt) > 100:
            prompt = prompt[:97] + "..."
        print(f"[{rid}] {prompt}")
        print(f"  -> {out.text.strip()}")
        print(f"     ({len(out.token_ids)} tokens, {out.finish_reason})")
    print()
