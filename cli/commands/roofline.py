"""`kvscope roofline MODEL`: one step's per-operator FLOPs, bytes, intensity and bound at a device's peaks.

Pure python and fast (no torch; rich only to print the answer): a table per operator with step totals,
the step's time and tokens/s ceilings, then the terminal roofline plot (kvscope.inspector.export.ascii_plot's
grid, coloured by bound on a terminal). `--json` prints the same numbers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kvscope.cli.errors import UsageError
from kvscope.cli.oneshot_args import load_device, load_model
from kvscope.costmodel.kv_estimate import EstimateError
from kvscope.costmodel.roofline_report import RooflineReport, analyze_step

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

_MARKERS = "ENQRWAOMmFL"  # one per op of STEP_OPS, in order
BOUND_STYLE = {"memory": "yellow", "compute": "green", "overhead": "magenta"}


def run_roofline(model: str, *, gpu: str = "H100-80GB", gpu_mem: float | None = None, phase: str = "decode",
                 batch: int = 1, context: int = 4096, dtype: str = "bf16", kv_dtype: str | None = None,
                 plot: bool = True, as_json: bool = False) -> int:
    """Analyse and print; a bad model, device or size is a UsageError (one line, exit code 2)."""
    shape = load_model(model)
    device = load_device(gpu, gpu_mem)
    try:
        report = analyze_step(shape, device, batch=batch, context=context, phase=phase, dtype=dtype,
                              kv_dtype=kv_dtype)
    except EstimateError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from rich.text import Text

    from kvscope.cli.console import emit

    parts: list[RenderableType] = [render_report(report)]
    if plot:
        parts += [Text(""), render_plot(report)]
    emit(*parts)
    return 0


def render_report(r: RooflineReport) -> RenderableType:
    """Title, the per-operator table with a total row, and the step's ceilings."""
    from rich.console import Group
    from rich.text import Text

    from kvscope.cli.console import data_table, key_value_table
    from kvscope.inspector.human_units import human_bytes, human_count, human_seconds

    title = Text(f"kvscope roofline  {r.model}  {r.phase}  batch {r.batch}  context {r.context:,}  {r.dtype} "
                 f"(KV {r.kv_dtype})  on {r.device}: {human_count(r.peak_flops, 'FLOP/s')}, "
                 f"{human_count(r.bandwidth, 'B/s')}, ridge {r.ridge:.0f} FLOP/B", style="bold")
    table = data_table("op", "FLOPs", "bytes", "FLOP/B", "bound", "time", "share", justify="lrrrlrr")
    for marker, op in zip(_MARKERS, r.ops):
        share = op.time_s / r.step_time_s if r.step_time_s else 0.0
        table.add_row(Text(f"{marker} {op.op}"), human_count(op.flops), human_bytes(op.bytes), f"{op.intensity:.1f}",
                      Text(op.bound, style=BOUND_STYLE.get(op.bound, "")), human_seconds(op.time_s), f"{share:.1%}",
                      end_section=op is r.ops[-1])
    total_intensity = r.total_flops / r.total_bytes if r.total_bytes else 0.0
    table.add_row(Text("  total", style="bold"), human_count(r.total_flops), human_bytes(r.total_bytes),
                  f"{total_intensity:.1f}", "", human_seconds(r.step_time_s), "100.0%")
    unit = "new tokens" if r.phase == "prefill" else "tokens"
    ceilings = key_value_table(notes=True)
    ceilings.add_row("step time", human_seconds(r.step_time_s), "sum of each op's bound (no overlap between ops)")
    ceilings.add_row("", human_seconds(r.overlapped_time_s), "whole step as one kernel (FLOPs and bytes overlapped)")
    ceilings.add_row("ceiling", f"{r.tokens_per_s:,.0f} {unit}/s",
                     f"{r.tokens_per_step:,} per step; {r.overlapped_tokens_per_s:,.0f}/s fully overlapped")
    if r.phase == "decode":
        ceilings.add_row("", f"{r.tokens_per_s / r.batch:,.1f} tokens/s", "per request")
    return Group(title, Text(""), table, Text(""), ceilings)


def render_plot(r: RooflineReport) -> Text:
    """The roofline plot: the roof, the ridge and one marker per operator, coloured by the op's bound."""
    from rich.text import Text

    from kvscope.inspector.export.ascii_plot import PlotPoint, roofline_plot

    points = [PlotPoint(op.op, op.intensity, op.flops / op.time_s if op.time_s else 0.0, marker)
              for marker, op in zip(_MARKERS, r.ops) if op.flops > 0]
    style_of = {marker: BOUND_STYLE.get(op.bound, "") for marker, op in zip(_MARKERS, r.ops)}
    lines = roofline_plot(points, r.peak_flops, r.bandwidth).split("\n")
    text = Text()
    for n, line in enumerate(lines):
        if n:
            text.append("\n")
        axis, bar, grid = line.partition("|")
        if not bar:  # the x axis, its labels and the legend
            text.append(line, style="dim" if n < len(lines) - 1 else "")
            if n == len(lines) - 1:
                _style_legend(text, len(text) - len(line), line, style_of)
            continue
        text.append(axis + bar, style="dim")
        for ch in grid:
            text.append(ch, style="blue" if ch in "-/" else "dim" if ch == ":" else
                        f"bold {style_of[ch]}" if ch in style_of else "")
    return text


def _style_legend(text: Text, offset: int, line: str, style_of: dict[str, str]) -> None:
    """Colour each legend entry's marker ('E embed   N attn_norm ...') like its point."""
    for i, ch in enumerate(line):
        if ch in style_of and (i == 0 or line[i - 1] == " ") and i + 1 < len(line) and line[i + 1] == " ":
            text.stylize(f"bold {style_of[ch]}", offset + i, offset + i + 1)
