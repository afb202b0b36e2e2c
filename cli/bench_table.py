"""The comparison `kvscope bench` prints: what ran (recipe, model, device, workload, what to look at), one
table row per variant (columns from kvscope.inspector.bench_report.TABLE_COLUMNS), and the notes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvscope.inspector.bench_report import TABLE_COLUMNS, TABLE_NOTES, BenchReport

if TYPE_CHECKING:
    from rich.console import RenderableType


def bench_renderable(report: BenchReport) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    from kvscope.cli.console import data_table

    head = Text()
    for key, value in (("recipe", f"{report.recipe} ({report.source})"), ("model", report.model),
                       ("device", report.device), ("backend", report.backend)):
        head.append(f"{key}: ", style="dim")
        head.append(value + "  ", style="bold")
    head.rstrip()
    head.append(f"\nworkload: {report.num_requests} requests, the same for every variant")
    if report.description:
        head.append(f"\nlook at: {report.description.strip()}", style="italic")
    table = data_table("variant", *(h for h, _ in TABLE_COLUMNS))
    for v in report.variants:
        table.add_row(Text(v.name, style="bold"), *(cell(v.summary) for _, cell in TABLE_COLUMNS))
    return Group(head, Text(""), table, Text(TABLE_NOTES, style="dim"))
