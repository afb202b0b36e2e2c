"""`kvscope trace RECIPE -o DIR`: run a recipe's workload and write its timelines.

DIR/trace.json    Chrome Trace Event format (Perfetto, chrome://tracing)
DIR/trace.nvtxt   NVTX text, for Nsight Systems: ImportNvtxt --cmd create -n trace.nvtxt -o trace.nsys-rep
DIR/events.jsonl  every event (header line first), for `kvscope replay`

--torch-profiler also runs torch.profiler around the workload and merges its events (CPU ops;
CUDA kernels on a GPU) into trace.json, shifted onto the engine's clock.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from kvscope.cli.errors import UsageError
from kvscope.cli.progress import ProgressBars
from kvscope.cli.recipe_args import model_label, recipe_header
from kvscope.cli.text_probe import attach_text_probe
from kvscope.config.recipe import Recipe, load_recipe


def output_folder(path: str) -> Path:
    """The -o folder, created if missing; UsageError naming it when it cannot be one."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"-o {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"-o {folder}: cannot create folder: {exc.strerror or exc}") from None
    return folder


def run_trace(recipe_path: str, *, out: str | None = None, torch_profiler: bool = False, nvtx: bool = True,
              kernels: bool = True) -> int:
    """Run the recipe (a progress bar on a terminal) and write the three files; exit code 2 if requests were
    rejected."""
    from kvscope.engine.probe.nvtx_ranges import nvtx_range_hook
    from kvscope.engine.session import RunSession
    from kvscope.events.bus import EventBus, EventList
    from kvscope.inspector.export.chrome_trace import trace_origin, write_chrome_trace
    from kvscope.inspector.export.nvtxt import write_nvtxt
    from kvscope.inspector.export.recording import attach_recorder
    from kvscope.inspector.metrics import Metrics

    recipe = load_recipe(recipe_path)
    folder = output_folder(out if out else f"trace-{recipe.name}")
    if recipe.deployment.disaggregated:
        if torch_profiler:
            raise UsageError(f"--torch-profiler: {recipe.source} is a disaggregated deployment; profile one engine")
        return trace_deployment(recipe, folder, nvtx=nvtx, kernels=kernels)

    bus = EventBus()
    events = bus.subscribe(EventList())
    metrics = bus.subscribe(Metrics())
    hook = nvtx_range_hook() if nvtx else None
    torch_events: list[dict[str, Any]] = []
    with ProgressBars() as bars:
        with bars.loading(model_label(recipe)):
            session = RunSession(recipe, bus=bus, kernel_events=kernels, range_hook=hook)
        bars.track_run(bus, f"tracing {recipe.name}", len(session.items))
        close_recording = attach_recorder(bus, folder / "events.jsonl",
                                          recipe_header(recipe, str(session.engine.device)))
        attach_text_probe(session)  # the recording replays with each request's text
        try:
            if torch_profiler:
                torch_events = _run_with_torch_profiler(session)
            else:
                session.run()
        finally:
            close_recording()

    meta = {"recipe": recipe.name, "recipe_path": recipe.source, "device": str(session.engine.device)}
    if torch_events:
        torch_events = _shift_torch_events(torch_events, trace_origin(events.events))
    trace = write_chrome_trace(folder / "trace.json", events.events, meta, torch_events)
    records = write_nvtxt(folder / "trace.nvtxt", events.events, os.getpid(), recipe.name)

    for line in session.rejected:
        print(f"kvscope: error: {line}", file=sys.stderr)
    from rich.text import Text

    from kvscope.cli.console import emit
    from kvscope.cli.summary_table import summary_table

    wrote = Text()
    for path, what in (
        (folder / "trace.json", f"{len(trace['traceEvents'])} trace events"
                                f"{f', {len(torch_events)} from torch.profiler' if torch_events else ''}"),
        (folder / "trace.nvtxt", f"{records} records; ImportNvtxt --cmd create -n {folder / 'trace.nvtxt'}"
                                 f" -o {folder / 'trace.nsys-rep'}"),
        (folder / "events.jsonl", f"{len(events.events)} events; kvscope replay {folder / 'events.jsonl'}"),
    ):
        wrote.append("\nwrote " if wrote else "wrote ")
        wrote.append(str(path), style="bold")
        wrote.append(f" ({what})")
    emit(summary_table(metrics.summary()), wrote)
    return 2 if session.rejected else 0


def trace_deployment(recipe: Recipe, folder: Path, *, nvtx: bool, kernels: bool) -> int:
    """A disaggregated deployment's trace: one trace.json (each engine its own processes, a KV transfer track,
    flows across), and per engine ENGINE.nvtxt and ENGINE.events.jsonl."""
    from rich.text import Text

    from kvscope.cli.commands.headless import report_problems
    from kvscope.cli.console import emit
    from kvscope.cli.deployment_report import DeploymentWatch, deployment_report
    from kvscope.engine.probe.nvtx_ranges import nvtx_range_hook
    from kvscope.engine.session import RunSession
    from kvscope.events.bus import EventBus, EventList
    from kvscope.inspector.export.deployment_trace import build_deployment_trace
    from kvscope.inspector.export.nvtxt import write_nvtxt
    from kvscope.inspector.export.recording import attach_recorder

    bus = EventBus()
    with ProgressBars() as bars:
        with bars.loading(model_label(recipe)):
            session = RunSession(recipe, bus=bus, kernel_events=kernels, range_hook=nvtx_range_hook() if nvtx else None)
        bars.track_run(bus, f"tracing {recipe.name}", len(session.items))
        lists = {name: b.subscribe(EventList()) for name, b in session.buses.items()}
        watch = DeploymentWatch.attach(session)  # the client's metrics on the proxy's bus
        header = recipe_header(recipe, str(session.engine.device))
        closers = [attach_recorder(b, folder / f"{name}.events.jsonl", header) for name, b in session.buses.items()]
        try:
            session.run()
        finally:
            for close in closers:
                close()
    failed = report_problems(session)
    assert session.deployment is not None  # a disaggregated recipe's session
    meta = {"recipe": recipe.name, "recipe_path": recipe.source, "transport": recipe.deployment.transport,
            "clock_offsets": session.deployment.clock_offsets()}
    trace = build_deployment_trace({name: lst.events for name, lst in lists.items()}, meta)
    (folder / "trace.json").write_text(json.dumps(trace, separators=(",", ":")), encoding="utf-8")
    wrote = Text("wrote ")
    wrote.append(str(folder / "trace.json"), style="bold")
    wrote.append(f" ({len(trace['traceEvents'])} trace events, {len(lists)} engines)")
    for name, lst in lists.items():
        records = write_nvtxt(folder / f"{name}.nvtxt", lst.events, os.getpid(), f"{recipe.name} {name}")
        wrote.append("\nwrote ")
        wrote.append(str(folder / f"{name}.events.jsonl"), style="bold")
        wrote.append(f" ({len(lst.events)} events) and {folder / f'{name}.nvtxt'} ({records} records)")
    emit(*deployment_report(watch), wrote)
    return 2 if failed else 0


ANCHOR = "kvscope::clock_anchor"
ANCHOR_END = "kvscope::clock_anchor_end"
PID_TORCH = 10


def _run_with_torch_profiler(session: Any) -> list[dict[str, Any]]:
    """Run the session under torch.profiler; its chrome-trace events, with the anchor's host time."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from kvscope.events.bus import now_ns

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        with record_function(ANCHOR):
            anchor_ns = now_ns()
        session.run()
        with record_function(ANCHOR_END):
            anchor_end_ns = now_ns()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "torch_trace.json"
        prof.export_chrome_trace(str(path))
        data = json.loads(path.read_text(encoding="utf-8"))
    raw = data["traceEvents"] if isinstance(data, dict) else data
    raw.append({"name": "__kvscope_anchor_ns", "ph": "_", "ts": anchor_ns, "end": anchor_end_ns})
    return raw


def _shift_torch_events(raw: list[dict[str, Any]], t0_ns: int) -> list[dict[str, Any]]:
    """Keep torch's slices, instants, flows and names; move them onto the engine's timeline."""
    mark = next(e for e in raw if e.get("name") == "__kvscope_anchor_ns")
    anchor = next((e for e in raw if e.get("name") == ANCHOR and e.get("ph") == "X"), None)
    anchor_end = next((e for e in raw if e.get("name") == ANCHOR_END and e.get("ph") == "X"), None)
    if anchor is None:
        return []
    # two anchors map the profiler's clock onto the engine's linearly: its approximate clock can run
    # a few percent fast or slow against perf_counter, which one offset alone would not correct
    torch0, ours0 = float(anchor["ts"]), (mark["ts"] - t0_ns) / 1000.0
    scale = 1.0
    if anchor_end is not None and mark.get("end") and float(anchor_end["ts"]) > torch0:
        scale = ((mark["end"] - mark["ts"]) / 1000.0) / (float(anchor_end["ts"]) - torch0)
    pids: dict[Any, int] = {}
    out: list[dict[str, Any]] = []
    for e in raw:
        ph = e.get("ph")
        if ph not in ("X", "i", "s", "f", "M") or e.get("name") in (ANCHOR, ANCHOR_END):
            continue
        if ph == "M" and e.get("name") not in ("thread_name", "thread_sort_index"):
            continue
        pid = pids.setdefault(e.get("pid"), PID_TORCH + len(pids))
        ev = dict(e)
        ev["pid"] = pid
        if "ts" in ev:
            ev["ts"] = round(ours0 + (float(ev["ts"]) - torch0) * scale, 3)
        if "dur" in ev:
            ev["dur"] = round(float(ev["dur"]) * scale, 3)
        out.append(ev)
    for original, pid in pids.items():
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"name": f"torch.profiler ({original})"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    return out
