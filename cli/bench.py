"""`kvscope bench RECIPE`: run each of a recipe's variants on the same workload and compare them.

The workload is built once, from the recipe as written, and handed to every variant
(a variant that overrides `workload` or `sampling` gets its own, and says so). The model
is loaded once per distinct (model, dtype, device) and reused. Each variant runs on a fresh
engine with a fresh Metrics subscriber; the table, --json and --chart all read those summaries.

A recipe without variants runs once, as written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvscope.cli.errors import UsageError
from kvscope.cli.recipe_args import add_recipe_argument, recipe_from_args
from kvscope.engine.errors import RecipeError

if TYPE_CHECKING:
    from kvscope.engine.llm_engine import LoadedModel
    from kvscope.engine.recipe import Recipe
    from kvscope.engine.workload import WorkItem
    from kvscope.inspector.bench_report import BenchReport, VariantResult

# --model-override names: a random-weight shape (fast, for tests) or the real SmolLM2 GGUF.
REAL_MODEL = "smollm2"
RANDOM_ALIASES = {"smollm2-135m-random": "smollm2-135m"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON to FILE ('-' = stdout)")
    parser.add_argument("--chart", metavar="FILE.svg", help="also draw the comparison as an SVG chart")
    parser.add_argument("--model-override", metavar="NAME",
                        help="run every variant on another model: a random-weight preset (tiny, tiny-gqa3, "
                             "smollm2-135m-random, llama-2-7b, ...) or smollm2 (the real GGUF)")
    parser.add_argument("--max-requests", metavar="N", type=int,
                        help="keep only the first N requests of the workload (quick checks)")
    parser.add_argument("--variant", metavar="NAME", action="append",
                        help="run only this variant (repeatable; default: all)")


def model_override(name: str) -> dict[str, Any]:
    """The recipe `model` mapping that --model-override NAME stands for (UsageError if unknown)."""
    from kvscope.engine.model_support import runnable_presets

    if name == REAL_MODEL:
        return {"source": "gguf", "path": REAL_MODEL}
    shape, runnable = RANDOM_ALIASES.get(name, name), runnable_presets()
    if shape not in runnable:
        known = ", ".join([REAL_MODEL, *runnable, *sorted(RANDOM_ALIASES)])
        raise UsageError(f"--model-override: unknown model {name!r} (known: {known})")
    return {"source": "random", "shape": shape, "seed": 0}


def _check_outputs(args: argparse.Namespace) -> None:
    if args.max_requests is not None and args.max_requests < 1:
        raise UsageError(f"--max-requests: must be a positive integer, got {args.max_requests}")
    if args.chart:
        suffix = Path(args.chart).suffix.lower()
        if suffix == ".png":
            raise UsageError(f"--chart {args.chart}: PNG needs an image library kvscope does not depend on; "
                             f"write .svg (any browser shows it, `rsvg-convert` turns it into PNG)")
        if suffix != ".svg":
            raise UsageError(f"--chart {args.chart}: expected a file name ending in .svg")
    for flag, path in (("--json", args.json), ("--chart", args.chart)):
        if path and path != "-" and not Path(path).parent.is_dir():
            raise UsageError(f"{flag} {path}: folder {Path(path).parent} does not exist")


def run(args: argparse.Namespace) -> int:
    _check_outputs(args)
    recipe = recipe_from_args(args)
    model = model_override(args.model_override) if args.model_override else None
    report = run_variants(recipe, model=model, max_requests=args.max_requests, only=args.variant)
    from kvscope.inspector.bench_report import format_report, render_svg

    rejected = [line for v in report.variants for line in v.rejected]
    for line in rejected:
        print(f"kvscope: error: {line}", file=sys.stderr)
    if args.json == "-":
        print(json.dumps(report.to_dict()))
    else:
        print(format_report(report))
        if args.json:
            _write(args.json, "--json", json.dumps(report.to_dict(), indent=2) + "\n")
            print(f"wrote {args.json}")
    if args.chart:
        _write(args.chart, "--chart", render_svg(report))
        if args.json != "-":
            print(f"wrote {args.chart}")
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
    declared = recipe.variants or [{"name": recipe.name, "overrides": {}}]
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
                r = r.with_overrides({"model": model})
        except RecipeError as exc:
            raise RecipeError(f"{exc} (in variant {v['name']!r})") from None
        out.append((v["name"], v["overrides"], r))
    return out


def _model_key(recipe: Recipe) -> tuple[Any, ...]:
    return (tuple(sorted(recipe.model.as_dict().items())), recipe.dtype, recipe.device)


def _workload_key(recipe: Recipe) -> tuple[str, str]:
    raw = recipe.raw
    return (json.dumps(raw.get("workload"), sort_keys=True), json.dumps(raw.get("sampling"), sort_keys=True))


def run_variants(recipe: Recipe, model: dict[str, Any] | None = None, max_requests: int | None = None,
                 only: list[str] | None = None) -> BenchReport:
    """Run every variant of `recipe` on one shared workload; the report holds each run's summary."""
    from kvscope.engine.llm_engine import load_for_recipe
    from kvscope.inspector.bench_report import BenchReport

    variants = variant_recipes(recipe, model, only)
    base = recipe.with_overrides({"model": model}) if model is not None else recipe
    models: dict[tuple[Any, ...], LoadedModel] = {}
    workloads: dict[tuple[Any, ...], list[WorkItem]] = {}
    report: BenchReport | None = None
    for i, (name, overrides, r) in enumerate(variants):
        if sys.stderr.isatty():
            print(f"kvscope bench: variant {i + 1}/{len(variants)}: {name}", file=sys.stderr)
        key = _model_key(r)
        if key not in models:
            models[key] = load_for_recipe(r)
        loaded = models[key]
        result, session = _run_one(name, overrides, r, loaded, workloads, base, max_requests)
        if report is None:
            engine = session.engine
            report = BenchReport(recipe.name, recipe.source, engine.config.name, str(engine.device),
                                 engine.backend_name, len(session.items), recipe.description)
        report.variants.append(result)
    assert report is not None
    return report


def _run_one(name: str, overrides: dict[str, Any], recipe: Recipe, loaded: LoadedModel,
             workloads: dict[tuple[Any, ...], list[WorkItem]], base: Recipe,
             max_requests: int | None) -> tuple[VariantResult, Any]:
    from kvscope.engine.session import RunSession
    from kvscope.inspector.bench_report import VariantResult
    from kvscope.inspector.events import EventBus
    from kvscope.inspector.metrics import Metrics

    bus = EventBus()
    metrics = bus.subscribe(Metrics())
    session = RunSession(recipe, bus=bus, kernel_events=False, loaded=loaded)
    # the workload of the recipe as written (same vocabulary), unless this variant changes it
    own = _workload_key(recipe) != _workload_key(base)
    key = (_workload_key(recipe), loaded.config.vocab_size)
    if key not in workloads:
        workloads[key] = session.items[:max_requests] if max_requests else list(session.items)
    session.items = workloads[key]
    t0 = time.perf_counter()
    session.run()
    wall = time.perf_counter() - t0
    label = f"{name} (own workload)" if own else name
    return VariantResult(label, overrides, metrics.summary(), wall, list(session.rejected)), session
