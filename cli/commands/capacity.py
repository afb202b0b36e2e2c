"""`kvscope bench RECIPE --max-rate --slo ttft_p90:2000 --slo tbt_p99:200`: per variant, the highest
Poisson request rate that meets the SLOs (kvscope.inspector.capacity), as a table and an SVG chart.

Every variant must run on a simulated device (`device: sim`): a search runs the workload a dozen times
per variant, which only the virtual clock makes quick. The workload is the recipe's synthetic one with
its arrival rate replaced by the rate being tried (same seed: the same requests at every rate).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from kvscope.cli.errors import UsageError
from kvscope.cli.recipe_args import model_label
from kvscope.config.recipe import load_recipe

if TYPE_CHECKING:
    from kvscope.config.recipe import Recipe
    from kvscope.inspector.capacity import CapacityResult, Probe, Slo

DEFAULT_SLOS = ("ttft_p90:2000", "tbt_p99:200")


def run_capacity(recipe_path: str, slos: list[str] | None, *, json_out: str | None = None,
                 chart: str | None = None, max_requests: int | None = None, variants: list[str] | None = None,
                 start_rate: float = 1.0) -> int:
    from kvscope.cli.commands.bench import _check_outputs, _write, variant_recipes
    from kvscope.inspector.capacity import SloError, parse_slo

    _check_outputs(json_out, chart, max_requests)
    if not start_rate > 0:
        raise UsageError(f"--start-rate: must be a positive number of requests/s, got {start_rate}")
    try:
        parsed = [parse_slo(s) for s in (slos or DEFAULT_SLOS)]
    except SloError as exc:
        raise UsageError(str(exc)) from None
    recipe = load_recipe(recipe_path)
    runs = variant_recipes(recipe, None, variants)
    for name, _, r in runs:
        if r.device != "sim":
            raise UsageError(f"--max-rate: {recipe.source}: variant {name!r} runs on device {r.device}; a capacity "
                             f"search runs the workload a dozen times per variant: use device: sim")
        if r.workload.synthetic is None:
            raise UsageError(f"--max-rate: {recipe.source}: workload.synthetic: a capacity search varies the "
                             f"arrival rate of a synthetic workload; this recipe has none")
    results = [search_variant(name, overrides, r, parsed, max_requests, start_rate) for name, overrides, r in runs]
    if json_out == "-":
        print(json.dumps(capacity_json(recipe, parsed, results)))
    else:
        from kvscope.cli.console import emit

        emit(capacity_renderable(recipe, parsed, results))
        if json_out:
            _write(json_out, "--json", json.dumps(capacity_json(recipe, parsed, results), indent=2) + "\n")
            print(f"wrote {json_out}")
    if chart:
        _write(chart, "--chart", capacity_svg(recipe, parsed, results))
        if json_out != "-":
            print(f"wrote {chart}")
    return 0


def search_variant(name: str, overrides: dict[str, Any], recipe: Recipe, slos: list[Slo],
                   max_requests: int | None, start_rate: float) -> CapacityResult:
    from kvscope.engine.model.loader import load_for_recipe
    from kvscope.engine.session import RunSession
    from kvscope.events.bus import EventBus
    from kvscope.inspector.capacity import CapacityResult, probe, search_max_rate
    from kvscope.inspector.metrics import Metrics

    loaded = load_for_recipe(recipe)

    def run(rate: float) -> Probe:
        r = recipe.with_overrides({"workload": {"synthetic": {"arrival_rate": rate}}}, name=recipe.name)
        bus = EventBus()
        metrics = bus.subscribe(Metrics())
        session = RunSession(r, bus=bus, kernel_events=False, loaded=loaded)
        if max_requests:
            session.items = session.items[:max_requests]
        session.run()
        p = probe(rate, metrics.summary(), metrics.latencies_ms(), slos, len(session.rejected))
        print(f"  {name}: {rate:8.3f} req/s  " + "  ".join(f"{s.label} {v:.0f} ms" for s, v in zip(slos, p.values))
              + ("  ok" if p.ok else "  over"), file=sys.stderr)
        return p

    rate, best, probes = search_max_rate(run, start=start_rate)
    return CapacityResult(name, overrides, rate, best, probes)


def _row(r: CapacityResult, slos: list[Slo]) -> list[str]:
    b = r.best
    values = [f"{v:.0f}" for v in b.values] if b else ["-"] * len(slos)
    return [f"{r.max_rate:.2f}", f"{b.summary.throughput_tok_s:.0f}" if b else "-", *values,
            r.binding(slos), str(len(r.probes))]


def capacity_renderable(recipe: Recipe, slos: list[Slo], results: list[CapacityResult]) -> Any:
    from rich.console import Group
    from rich.text import Text

    from kvscope.cli.console import data_table

    head = Text()
    head.append("capacity search: ", style="dim")
    head.append(f"{recipe.name} ({recipe.source})", style="bold")
    head.append("\nSLOs: " + ", ".join(f"{s.label} <= {s.limit_ms:g} ms" for s in slos))
    if recipe.description:
        head.append(f"\nlook at: {recipe.description.strip()}", style="italic")
    table = data_table("variant", "max req/s", "tok/s there", *(f"{s.label} ms" for s in slos), "limited by", "runs")
    for r in results:
        table.add_row(Text(r.name, style="bold"), *_row(r, slos))
    notes = Text("max req/s: the highest Poisson arrival rate whose run met every SLO with every request finished "
                 "(to 5%); the latencies are that run's; limited by: the SLO broken just above it.", style="dim")
    return Group(head, Text(""), table, notes)


def capacity_json(recipe: Recipe, slos: list[Slo], results: list[CapacityResult]) -> dict[str, Any]:
    return {
        "recipe": recipe.name, "source": recipe.source,
        "slos": [{"metric": s.metric, "percentile": s.percentile, "limit_ms": s.limit_ms} for s in slos],
        "variants": [{"name": r.name, "overrides": r.overrides, "max_rate": r.max_rate,
                      "limited_by": r.binding(slos),
                      "at_max_rate": r.best.summary.to_dict() if r.best else None,
                      "probes": [{"rate": p.rate, "ok": p.ok, "values_ms": p.values} for p in r.probes]}
                     for r in results],
    }


def capacity_svg(recipe: Recipe, slos: list[Slo], results: list[CapacityResult]) -> str:
    """The bench chart's panels (kvscope.inspector.bench_report.render_svg): max rate, and the run there."""
    from kvscope.inspector.bench_report import BenchReport, ChartMetric, VariantResult, render_svg
    from kvscope.inspector.metrics import RunSummary

    synthetic = recipe.workload.synthetic
    report = BenchReport(f"{recipe.name} capacity search", recipe.source, recipe.model.name or model_label(recipe),
                         "simulated", "cost-model", synthetic.num_requests if synthetic else 0)
    rate_of: dict[int, float] = {}
    for r in results:
        summary = r.best.summary if r.best else RunSummary()
        rate_of[id(summary)] = r.max_rate
        report.variants.append(VariantResult(r.name, r.overrides, summary))
    metrics = (
        ChartMetric("max request rate meeting the SLOs (req/s)", lambda s: rate_of[id(s)], lambda x: f"{x:.2f}"),
        ChartMetric("throughput there (tok/s)", lambda s: s.throughput_tok_s, lambda x: f"{x:.0f}"),
        ChartMetric("TTFT p99 there (ms)", lambda s: s.ttft_ms.p99, lambda x: f"{x:.0f}"),
        ChartMetric("ITL p99 there (ms)", lambda s: s.itl_ms.p99, lambda x: f"{x:.1f}"),
    )
    return render_svg(report, metrics)
