"""`kvscope roofline MODEL`: one step's per-operator FLOPs, bytes, intensity and bound at a device's peaks.

Pure python and fast (no torch): a table per operator, step totals and tokens/s
ceilings, then a terminal roofline plot. `--json` prints the same numbers.
"""

from __future__ import annotations

import argparse
import json

from kvscope.cli.errors import UsageError
from kvscope.cli.oneshot_args import add_device_arguments, add_model_argument, load_device, load_model
from kvscope.inspector.ascii_plot import PlotPoint, roofline_plot
from kvscope.inspector.kv_estimate import DTYPE_BYTES, EstimateError
from kvscope.inspector.roofline_report import PHASES, RooflineReport, analyze_step
from kvscope.inspector.text_table import format_table, human_bytes, human_count, human_seconds

_MARKERS = "ENQRWAOMmFL"  # one per op of STEP_OPS, in order


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    add_device_arguments(parser)
    parser.add_argument("--phase", default="decode", metavar="PHASE",
                        help=f"{' or '.join(PHASES)}: decode = one new token per request at --context; "
                             "prefill = a --context-token prompt per request (default decode)")
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="requests in the step (default 1)")
    parser.add_argument("--context", type=int, default=4096, metavar="TOKENS",
                        help="tokens of context per request (default 4096)")
    parser.add_argument("--dtype", default="bf16", metavar="DTYPE",
                        help=f"weights / matmul dtype: {', '.join(DTYPE_BYTES)} (default bf16)")
    parser.add_argument("--kv-dtype", default=None, metavar="DTYPE", help="KV cache dtype (default: --dtype)")
    parser.add_argument("--no-plot", action="store_true", help="skip the terminal roofline plot")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")


def run(args: argparse.Namespace) -> int:
    shape = load_model(args.model)
    device = load_device(args)
    try:
        report = analyze_step(shape, device, batch=args.batch, context=args.context, phase=args.phase,
                              dtype=args.dtype, kv_dtype=args.kv_dtype)
    except EstimateError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(render_report(report))
    if not args.no_plot:
        print()
        print(render_plot(report))
    return 0


def render_report(r: RooflineReport) -> str:
    """Title, the per-operator table with a total row, and the step's ceilings."""
    title = (f"kvscope roofline  {r.model}  {r.phase}  batch {r.batch}  context {r.context:,}  {r.dtype} "
             f"(KV {r.kv_dtype})  on {r.device}: {human_count(r.peak_flops, 'FLOP/s')}, "
             f"{human_count(r.bandwidth, 'B/s')}, ridge {r.ridge:.0f} FLOP/B")
    rows = []
    for marker, op in zip(_MARKERS, r.ops):
        share = op.time_s / r.step_time_s if r.step_time_s else 0.0
        rows.append([f"{marker} {op.op}", human_count(op.flops), human_bytes(op.bytes), f"{op.intensity:.1f}",
                     op.bound, human_seconds(op.time_s), f"{share:.1%}"])
    total_intensity = r.total_flops / r.total_bytes if r.total_bytes else 0.0
    rows.append(["  total", human_count(r.total_flops), human_bytes(r.total_bytes), f"{total_intensity:.1f}", "",
                 human_seconds(r.step_time_s), "100.0%"])
    table = format_table(["op", "FLOPs", "bytes", "FLOP/B", "bound", "time", "share"], rows, "lrrrlrr")
    unit = "new tokens" if r.phase == "prefill" else "tokens"
    summary = [
        f"step time   {human_seconds(r.step_time_s)}  sum of each op's bound (no overlap between ops)",
        f"            {human_seconds(r.overlapped_time_s)}  whole step as one kernel (FLOPs and bytes overlapped)",
        f"ceiling     {r.tokens_per_s:,.0f} {unit}/s  ({r.tokens_per_step:,} per step; "
        f"{r.overlapped_tokens_per_s:,.0f}/s fully overlapped)",
    ]
    if r.phase == "decode":
        summary.append(f"            {r.tokens_per_s / r.batch:,.1f} tokens/s per request")
    return title + "\n\n" + table + "\n\n" + "\n".join(summary)


def render_plot(r: RooflineReport) -> str:
    points = [PlotPoint(op.op, op.intensity, op.flops / op.time_s if op.time_s else 0.0, marker)
              for marker, op in zip(_MARKERS, r.ops) if op.flops > 0]
    return roofline_plot(points, r.peak_flops, r.bandwidth)
