"""The `kvscope bench` report: one row per recipe variant, as table columns (kvscope.cli.bench_table prints
them), a JSON document and an SVG chart.

Every number comes from a variant's RunSummary (kvscope.inspector.metrics, the one place
metrics are defined); this module only chooses columns, formats them and draws them.
Pure python, no torch. The SVG is written by hand: one panel per metric, one bar per variant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from kvscope.inspector.batch_timeline import BatchTimeline
from kvscope.inspector.export.timeline_svg import timeline_section
from kvscope.inspector.human_units import percent
from kvscope.inspector.metrics import RunSummary

JSON_SCHEMA = 1


@dataclass(slots=True)
class VariantResult:
    """One variant's run: its name, the overrides it applied and the metrics of its run."""

    name: str
    overrides: dict[str, Any]
    summary: RunSummary
    wall_s: float = 0.0
    rejected: list[str] = field(default_factory=list)
    timeline: BatchTimeline | None = None  # the run's batch timeline, for the chart (not in the JSON)


@dataclass(slots=True)
class BenchReport:
    """All variants of one recipe, run on the same workload."""

    recipe: str
    source: str
    model: str
    device: str
    backend: str
    num_requests: int
    description: str = ""
    variants: list[VariantResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The --json document."""
        return {
            "schema": JSON_SCHEMA,
            "recipe": self.recipe,
            "source": self.source,
            "model": self.model,
            "device": self.device,
            "backend": self.backend,
            "num_requests": self.num_requests,
            "variants": [
                {"name": v.name, "overrides": v.overrides, "wall_s": v.wall_s, "rejected": list(v.rejected),
                 "summary": v.summary.to_dict()}
                for v in self.variants
            ],
        }


def _ms(x: float) -> str:
    return f"{x:.1f}"


# (header, cell) for the comparison table (kvscope.cli.bench_table); latencies in ms, fractions as percentages.
TABLE_COLUMNS: tuple[tuple[str, Callable[[RunSummary], str]], ...] = (
    ("done", lambda s: f"{s.finished}/{s.requests}"),
    ("tok/s", lambda s: f"{s.throughput_tok_s:.1f}"),
    ("steps", lambda s: str(s.steps)),
    ("tok/step", lambda s: f"{s.tokens_per_step_mean:.1f}"),
    ("padding", lambda s: percent(s.padding_share)),
    ("TTFT p50", lambda s: _ms(s.ttft_ms.p50)),
    ("TTFT p99", lambda s: _ms(s.ttft_ms.p99)),
    ("ITL p50", lambda s: _ms(s.itl_ms.p50)),
    ("ITL p99", lambda s: _ms(s.itl_ms.p99)),
    ("peak KV", lambda s: f"{s.peak_kv_blocks}/{s.num_blocks} ({percent(s.peak_kv_usage)})"),
    ("waste", lambda s: percent(s.internal_fragmentation_mean)),
    ("contig waste", lambda s: percent(s.contiguous_waste_mean)),
    ("ext frag", lambda s: percent(s.external_fragmentation_mean)),
    ("hit rate", lambda s: percent(s.prefix_hit_rate)),
    ("preempt", lambda s: str(s.preemptions)),
    ("accept", lambda s: percent(s.spec_decode.acceptance_rate) if s.spec_decode else "-"),
    ("acc len", lambda s: f"{s.spec_decode.mean_acceptance_length:.2f}" if s.spec_decode else "-"),
)

TABLE_NOTES = (
    "TTFT / ITL in ms. padding: tokens a static batch computes and throws away, of all it computes."
    " waste: reserved-but-empty KV slots in the pool (mean over steps);"
    " contig waste: what a max_model_len contiguous reservation would leave empty for the same requests;"
    " ext frag: free blocks outside the longest free run (the contiguous allocator)."
    " accept: drafts accepted, of those proposed; acc len: tokens per verification (speculative decoding)."
)


@dataclass(frozen=True, slots=True)
class ChartMetric:
    """One panel of the chart: a title and how to read the value from a summary."""

    title: str
    value: Callable[[RunSummary], float]
    fmt: Callable[[float], str]


CHART_METRICS: tuple[ChartMetric, ...] = (
    ChartMetric("throughput (tok/s, higher is better)", lambda s: s.throughput_tok_s, lambda x: f"{x:.1f}"),
    ChartMetric("tokens per step (higher is better)", lambda s: s.tokens_per_step_mean, lambda x: f"{x:.1f}"),
    ChartMetric("TTFT p50 (ms)", lambda s: s.ttft_ms.p50, lambda x: f"{x:.1f}"),
    ChartMetric("TTFT p99 (ms)", lambda s: s.ttft_ms.p99, lambda x: f"{x:.1f}"),
    ChartMetric("ITL p50 (ms)", lambda s: s.itl_ms.p50, lambda x: f"{x:.1f}"),
    ChartMetric("ITL p99 (ms)", lambda s: s.itl_ms.p99, lambda x: f"{x:.1f}"),
    ChartMetric("peak KV use (% of pool)", lambda s: 100 * s.peak_kv_usage, lambda x: f"{x:.1f}%"),
    ChartMetric("KV waste (% of reserved slots)", lambda s: 100 * s.internal_fragmentation_mean,
                lambda x: f"{x:.1f}%"),
    ChartMetric("prefix hit rate (%)", lambda s: 100 * s.prefix_hit_rate, lambda x: f"{x:.1f}%"),
    ChartMetric("preemptions", lambda s: float(s.preemptions), lambda x: f"{x:.0f}"),
)

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")

_PANEL_W = 440
_LABEL_W = 120
_BAR_MAX = 240
_BAR_H = 16
_BAR_GAP = 6
_PANEL_PAD = 34
_COLUMNS = 2
_MARGIN = 20
_TITLE_H = 40


def render_svg(report: BenchReport, metrics: Sequence[ChartMetric] = CHART_METRICS) -> str:
    """A standalone SVG: one panel per metric, one horizontal bar per variant (length relative to the panel max).

    Each panel is a <g class="panel" data-metric=...>; every bar in it is a <rect class="bar">
    carrying data-variant and data-value, so the chart can be checked without parsing geometry.
    Under the bars, each variant's batch timeline (kvscope.inspector.export.timeline_svg), when the report has them.
    """
    n = len(report.variants)
    panel_h = _PANEL_PAD + n * (_BAR_H + _BAR_GAP) + 10
    rows = -(-len(metrics) // _COLUMNS)
    width = _MARGIN * 2 + _COLUMNS * _PANEL_W
    title = f"kvscope bench: {report.recipe}  ({report.model}, {report.device}, {report.num_requests} requests)"
    timelines = [(v.name, v.timeline) for v in report.variants if v.timeline is not None]
    section, section_h = timeline_section(timelines, _MARGIN, _TITLE_H + rows * panel_h + 10, width - 2 * _MARGIN,
                                          columns=_COLUMNS)
    height = _TITLE_H + rows * panel_h + _MARGIN + (section_h + 10 if section else 0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_MARGIN}" y="26" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for i, metric in enumerate(metrics):
        x0 = _MARGIN + (i % _COLUMNS) * _PANEL_W
        y0 = _TITLE_H + (i // _COLUMNS) * panel_h
        out.append(f'<g class="panel" data-metric="{_attr(metric.title)}">')
        out.append(f'<text x="{x0}" y="{y0 + 18}" font-weight="bold">{escape(metric.title)}</text>')
        values = [max(metric.value(v.summary), 0.0) for v in report.variants]
        top = max(values, default=0.0)
        for j, (variant, value) in enumerate(zip(report.variants, values)):
            y = y0 + _PANEL_PAD + j * (_BAR_H + _BAR_GAP)
            length = _BAR_MAX * value / top if top > 0 else 0.0
            colour = PALETTE[j % len(PALETTE)]
            out.append(f'<text x="{x0 + _LABEL_W - 6}" y="{y + _BAR_H - 3}" text-anchor="end">'
                       f'{escape(_clip(variant.name, 18))}</text>')
            out.append(f'<rect class="bar" x="{x0 + _LABEL_W}" y="{y}" width="{length:.2f}" height="{_BAR_H}" '
                       f'fill="{colour}" data-variant="{_attr(variant.name)}" data-value="{value!r}"/>')
            out.append(f'<text x="{x0 + _LABEL_W + length + 4:.2f}" y="{y + _BAR_H - 3}">'
                       f'{escape(metric.fmt(value))}</text>')
        out.append("</g>")
    out += section
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})
