"""The headless run: the workload to the end (a progress bar on a terminal), then the outputs and the
metrics summary (a rich table, or JSON)."""

from __future__ import annotations

import json
import sys

from kvscope.cli.deployment_report import DeploymentWatch, deployment_report
from kvscope.cli.progress import ProgressBars
from kvscope.cli.recipe_args import model_label, recipe_header
from kvscope.cli.text_probe import attach_text_probe
from kvscope.config.recipe import Recipe
from kvscope.engine.probe.nvtx_ranges import nvtx_range_hook
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.inspector.export.recording import attach_recorder
from kvscope.inspector.metrics import Metrics


def run_headless(recipe: Recipe, as_json: bool = False, record: str | None = None,
                 show_outputs: bool | None = None, nvtx: bool = True) -> int:
    """Run `recipe` to the end and print what it answered and how it went; exit code 2 if requests were
    rejected. `record`: also write every event (with each request's text) to that JSONL file."""
    bus = EventBus()
    metrics = bus.subscribe(Metrics())
    with ProgressBars() as bars:
        with bars.loading(model_label(recipe)):
            session = RunSession(recipe, bus=bus, range_hook=nvtx_range_hook() if nvtx else None)
        watch = DeploymentWatch.attach(session, metrics) if recipe.deployment.disaggregated else None
        bars.track_run(bus, recipe.name, len(session.items))
        closer = None
        if record:
            closer = attach_recorder(bus, record, recipe_header(recipe, str(session.engine.device)))
            attach_text_probe(session)
        try:
            session.run()
        finally:
            if closer is not None:
                closer()
    failed = report_problems(session)
    summary = metrics.summary()
    if as_json:
        data = summary.to_dict() if watch is None else watch.to_dict()
        data["recipe"] = recipe.name
        data["outputs"] = [{"request_id": o.request_id, "text": o.text, "finish_reason": o.finish_reason,
                            "tokens": len(o.token_ids)} for o in sorted(session.outputs.values(),
                                                                       key=lambda o: o.request_id)]
        print(json.dumps(data))
        return 2 if failed else 0
    from rich.text import Text

    from kvscope.cli.console import emit
    from kvscope.cli.summary_table import summary_table

    if show_outputs is None:
        show_outputs = not recipe.workload.synthetic
    parts = outputs_text(session) if show_outputs else []
    engine = session.engine
    head = Text()
    for key, value in (("recipe", f"{recipe.name} ({recipe.source})"), ("model", engine.config.name),
                       ("device", str(engine.device)), ("backend", engine.backend_name)):
        head.append(f"{key}: ", style="dim")
        head.append(value + "  ", style="bold")
    head.rstrip()
    emit(*parts, head, *(deployment_report(watch) if watch is not None else [summary_table(summary)]))
    return 2 if failed else 0


def report_problems(session: RunSession) -> bool:
    """Print the requests the run rejected, and a deployment's failed requests, one line each (stderr);
    whether there were any."""
    lines = list(session.rejected)
    failure = session.failure_report()
    if failure:
        lines.append(f"{session.recipe.source}: {failure}")
    for line in lines:
        print(f"kvscope: error: {line}", file=sys.stderr)
    return bool(lines)


def outputs_text(session: RunSession) -> list:
    """Each request's prompt (cut to 100 characters), its answer and how it ended, then a blank line."""
    from rich.text import Text

    tok = session.tokenizer
    parts: list = []
    for rid in session.request_ids:
        out = session.outputs.get(rid)
        if out is None:
            continue
        prompt = tok.decode(out.prompt_token_ids).strip().replace("\n", " ")
        if len(prompt) > 100:
            prompt = prompt[:97] + "..."
        text = Text(f"[{rid}] ", style="bold")
        text.append(prompt, style="dim")
        text.append("\n  -> ")
        text.append(out.text.strip(), style="green")
        text.append(f"\n     ({len(out.token_ids)} tokens, {out.finish_reason})", style="dim")
        parts.append(text)
    if parts:
        parts.append(Text(""))
    return parts
