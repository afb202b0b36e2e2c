"""`kvscope bench RECIPE`: run each of a recipe's variants on the same workload and compare them.

The workload is built once, from the recipe as written, and handed to every variant
(a variant that overrides `workload` or `sampling` gets its own, and says so). The model
is loaded once per distinct (model, dtype, device) and reused. Each variant runs on a fresh
engine with a fresh Metrics subscriber; the table, --json and --chart all read those summaries.

A recipe without variants runs once, as written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvscope.cli.errors import UsageError
from kvscope.cli.progress import ProgressBars
from kvscope.cli.recipe_args import model_label, model_override
from kvscope.config.recipe import load_recipe
from kvscope.errors import RecipeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kvscope.config.recipe import Recipe, Variant
    from kvscope.engine.model.loader import LoadedModel
    from kvscope.engine.workload import WorkItem
    from kvscope.inspector.bench_report import BenchReport, VariantResult

def speculation_within(recipe: Recipe, model: dict[str, Any]) -> dict[str, Any]:
    """Overrides that keep a recipe's drafts runnable on an override model: a layerskip depth inside it (at most
    its layers - 1, so a quick check on a 2-layer model still drafts), and a separate draft model of its
    vocabulary (the override model itself; a random draft stays random, of the override's shape, with its own
    seed); {} when nothing needs to change."""
    from kvscope.config.model_presets import get_preset

    spec = recipe.speculative
    shape = model.get("shape", "smollm2-135m")
    if spec is None or spec.method == "ngram" or recipe.device == "sim":
        return {}
    if spec.method == "draft_model":
        draft = spec.model
        if draft is not None and draft.source == "random":
            return {"speculative": {"model": {"source": "random", "shape": shape, "seed": draft.seed}}}
        return {"speculative": {"model": dict(model)}}
    layers = get_preset(shape).num_layers
    if spec.num_layers < layers:
        return {}
    return {"speculative": {"num_layers": max(layers - 1, 1)}}


def _check_outputs(json_out: str | None, chart: str | None, max_requests: int | None) -> None:
    if max_requests is not None and max_requests < 1:
        raise UsageError(f"--max-requests: must be a positive integer, got {max_requests}")
    if chart:
        suffix = Path(chart).suffix.lower()
        if suffix == ".png":
            raise UsageError(f"--chart {chart}: PNG needs an image library kvscope does not depend on; "
                             f"write .svg (any browser shows it, `rsvg-convert` turns it into PNG)")
        if suffix != ".svg":
            raise UsageError(f"--chart {chart}: expected a file name ending in .svg")
    for flag, path in (("--json", json_out), ("--chart", chart)):
        if path and path != "-" and not Path(path).parent.is_dir():
            raise UsageError(f"{flag} {path}: folder {Path(path).parent} does not exist")


def run_bench(recipe_path: str, *, json_out: str | None = None, chart: str | None = None,
              model: str | None = None, max_requests: int | None = None, variants: list[str] | None = None) -> int:
    """`kvscope bench`: run the variants, print the comparison (a rich table, or JSON with --json -), write
    --json / --chart files; exit code 2 if a variant rejected requests."""
    _check_outputs(json_out, chart, max_requests)
    recipe = load_recipe(recipe_path)
    model_spec = model_override(model) if model else None
    report = run_variants(recipe, model=model_spec, max_requests=max_requests, only=variants, progress=True)
    from kvscope.inspector.bench_report import render_svg

    rejected = [line for v in report.variants for line in v.rejected]
    for line in rejected:
        print(f"kvscope: error: {line}", file=sys.stderr)
    if json_out == "-":
        print(json.dumps(report.to_dict()))
    else:
        from kvscope.cli.bench_table import bench_renderable
        from kvscope.cli.console import emit

        emit(bench_renderable(report))
        if json_out:
            _write(json_out, "--json", json.dumps(report.to_dict(), indent=2) + "\n")
            print(f"wrote {json_out}")
    if chart:
        _write(chart, "--chart", render_svg(report))
        if json_out != "-":
            print(f"wrote {chart}")
    return 2 if rejected else 0


def _write(path: str, flag: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None


# --- running the variants -------------------------------------------------------------------

def variant_recipes(recipe: Recipe, model: dict[str, Any] | None = None,
                    only: list[str] | None = None) -> list[tuple[str, dict[str, Any], Recipe]]:
    """(name, overrides, recipe) per variant; the recipe as written when it declares none."""
    declared: Sequence[Variant | dict[str, Any]] = recipe.variants or [{"name": recipe.name, "overrides": {}}]
    if only:
        names = [v["name"] for v in declared]
        for wanted in only:
            if wanted not in names:
                raise UsageError(f"--variant {wanted}: {recipe.source} has no such variant "
                                 f"(known: {', '.join(names)})")
        declared = [v for v in declared if v["name"] in only]
    out = []
    for v in declared:
        try:
            r = recipe.with_overrides(v["overrides"], name=f"{recipe.name}/{v['name']}")
            if model is not None:
                r = r.with_overrides({"model": model, **speculation_within(r, model)})
        except RecipeError as exc:
            raise RecipeError(f"{exc} (in variant {v['name']!r})") from None
        out.append((v["name"], v["overrides"], r))
    return out


def _model_key(recipe: Recipe) -> tuple[Any, ...]:
    return (recipe.model, recipe.dtype, recipe.device)


def _workload_key(recipe: Recipe) -> tuple[str, str]:
    raw = recipe.raw
    return (json.dumps(raw.get("workload"), sort_keys=True), json.dumps(raw.get("sampling"), sort_keys=True))


def run_variants(recipe: Recipe, model: dict[str, Any] | None = None, max_requests: int | None = None,
                 only: list[str] | None = None, progress: bool = False) -> BenchReport:
    """Run every variant of `recipe` on one shared workload; the report holds each run's summary.
    `progress`: a bar per model load and per variant on standard error, when it is a terminal."""
    from kvscope.engine.model.loader import load_for_recipe
    from kvscope.inspector.bench_report import BenchReport

    variants = variant_recipes(recipe, model, only)
    base = recipe.with_overrides({"model": model}) if model is not None else recipe
    models: dict[tuple[Any, ...], LoadedModel] = {}
    workloads: dict[tuple[Any, ...], list[WorkItem]] = {}
    report: BenchReport | None = None
    with ProgressBars(None if progress else False) as bars:
        for i, (name, overrides, r) in enumerate(variants):
            key = _model_key(r)
            if key not in models:
                with bars.loading(model_label(r)):
                    models[key] = load_for_recipe(r)
            loaded = models[key]
            label = f"variant {i + 1}/{len(variants)}: {name}"
            result, session = _run_one(name, overrides, r, loaded, workloads, base, max_requests, bars, label)
            if report is None:
                engine = session.engine
                report = BenchReport(recipe.name, recipe.source, engine.config.name, str(engine.device),
                                     engine.backend_name, len(session.items), recipe.description)
            report.variants.append(result)
    assert report is not None
    return report


def _run_one(name: str, overrides: dict[str, Any], recipe: Recipe, loaded: LoadedModel,
             workloads: dict[tuple[Any, ...], list[WorkItem]], base: Recipe, max_requests: int | None,
             bars: ProgressBars, label: str) -> tuple[VariantResult, Any]:
    from kvscope.engine.session import RunSession
    from kvscope.events.bus import EventBus
    from kvscope.inspector.batch_timeline import BatchTimeline
    from kvscope.inspector.bench_report import VariantResult
    from kvscope.inspector.metrics import Metrics

    bus = EventBus()
    metrics = bus.subscribe(Metrics())
    timeline = bus.subscribe(BatchTimeline(keep_steps=None))
    session = RunSession(recipe, bus=bus, kernel_events=False, loaded=loaded)
    # the workload of the recipe as written (same vocabulary), unless this variant changes it
    own = _workload_key(recipe) != _workload_key(base)
    key = (_workload_key(recipe), loaded.config.vocab_size)
    if key not in workloads:
        workloads[key] = session.items[:max_requests] if max_requests else list(session.items)
    session.items = workloads[key]
    bars.track_run(bus, label, len(session.items))
    watch = None
    if recipe.deployment.disaggregated:  # the client's latencies, from the engines' buses
        from kvscope.cli.deployment_report import DeploymentWatch

        watch = DeploymentWatch.attach(session, metrics)
        bus.unsubscribe(timeline)
        next(b for n, b in session.buses.items() if n.startswith("decode")).subscribe(timeline)
    t0 = time.perf_counter()
    try:
        session.run()
    finally:
        session.close()
    wall = time.perf_counter() - t0
    label = f"{name} (own workload)" if own else name
    summary = watch.run_summary() if watch is not None else metrics.summary()
    rejected = list(session.rejected)
    failure = session.failure_report()
    if failure:
        rejected.append(f"{recipe.source}: variant {name}: {failure}")
    return VariantResult(label, overrides, summary, wall, rejected, timeline), session
