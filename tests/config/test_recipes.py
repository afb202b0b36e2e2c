"""Every recipe in recipes/ stays runnable: it validates, runs headless, and `kvscope bench` gives one row per variant.

The real model is swapped for the tiny random one and the workload shrunk, so each
recipe costs a second or two; what is checked is that the recipe still fits the
engine (schema, pool sizes, variants), not its numbers (tests/cli/test_bench.py does that).
"""

from __future__ import annotations

import pytest

from kvscope.cli.commands.bench import speculation_within
from kvscope.cli.commands.headless import run_headless
from kvscope.cli.main import main
from kvscope.config.recipe import Recipe, load_recipe
from support.paths import RECIPES as RECIPES_DIR

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
TINY = {"source": "random", "shape": "tiny", "seed": 0}
SHRUNK_REQUESTS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_issue_recipes_exist():
    names = {p.stem for p in RECIPES}
    wanted = {"static-vs-continuous", "paged-vs-contiguous", "block-size-sweep", "prefix-cache",
              "chunked-prefill", "preemption"}
    assert wanted <= names, f"missing: {sorted(wanted - names)}"


def small(recipe: Recipe) -> Recipe:
    """The recipe on the tiny random model (unless it already names a random one), with a few requests."""
    over: dict = {}
    if recipe.model.source != "random" and recipe.device != "sim":  # a simulated model costs no compute
        over["model"] = TINY
    w = recipe.workload
    work: dict = {}
    if w.synthetic is not None:
        work["synthetic"] = {"num_requests": min(w.synthetic.num_requests, SHRUNK_REQUESTS)}
    if w.prompts:
        work["prompts"] = w.prompts[:SHRUNK_REQUESTS]
    if w.chat:
        work["chat"] = recipe.raw["workload"]["chat"][:SHRUNK_REQUESTS]
    if work:
        over["workload"] = work
    if "model" in over:
        over.update(speculation_within(recipe, over["model"]))
    return recipe.with_overrides(over)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_with_every_variant(path):
    recipe = load_recipe(path)
    assert path.read_text().lstrip().startswith("#"), "a recipe opens with a comment block saying what to look at"
    names = [v["name"] for v in recipe.variants]
    assert len(names) == len(set(names)), f"duplicate variant names {names}"
    for v in recipe.variants:
        variant = recipe.with_overrides(v["overrides"], name=v["name"])
        assert variant.name == v["name"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_headless_on_the_tiny_model(path, capsys):
    recipe = small(load_recipe(path))
    expected = len(recipe.workload.prompts) + len(recipe.workload.chat)
    expected = expected * recipe.workload.repeat
    expected += recipe.workload.synthetic.num_requests if recipe.workload.synthetic else 0
    assert run_headless(recipe, show_outputs=False) == 0
    out = capsys.readouterr().out
    assert f"requests        {expected}/{expected} finished" in out


def table_rows(out: str) -> list[str]:
    """The variant names of the comparison table printed by `kvscope bench`."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    rows = []
    for line in lines[rule + 1:]:
        if not line.strip() or line.startswith("TTFT / ITL in ms"):
            break
        rows.append(line.split()[0])
    return rows


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_bench_prints_one_row_per_variant(path, capsys):
    recipe = load_recipe(path)
    argv = ["bench", str(path), "--max-requests", str(SHRUNK_REQUESTS)]
    if recipe.model.source != "random" and recipe.device != "sim":
        argv += ["--model-override", "tiny"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    expected = [v["name"] for v in recipe.variants] or [recipe.name]
    assert table_rows(out) == expected
    w = recipe.workload
    written = (len(w.prompts) + len(w.chat)) * w.repeat + (w.synthetic.num_requests if w.synthetic else 0)
    assert f"workload: {min(SHRUNK_REQUESTS, written)} requests" in out  # a recipe of one request keeps it
