"""`kvscope bench`: its JSON and SVG outputs, its errors, and the relations the recipes exist to show.

Runs use the tiny random model, so the relations checked are the deterministic ones
(steps, tokens per step, KV blocks, hit rates, waste, preemptions), never wall time.
Oracles come from the workload itself (lengths drawn by the seeded generator) and the
policies' definitions, not from the engine's own counters.
"""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvscope.cli.commands.bench import run_variants, variant_recipes
from kvscope.cli.main import main
from kvscope.config.model_presets import get_preset
from kvscope.config.recipe import Recipe, load_recipe
from kvscope.engine.model.loader import load_tokenizer
from kvscope.engine.workload import build_workload
from kvscope.inspector.bench_report import CHART_METRICS
from support.paths import RECIPES

TINY = {"source": "random", "shape": "tiny", "seed": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_RECIPE = """
# two variants of a small synthetic workload
name: small
model: {source: random, shape: tiny}
cache: {block_size: 4, num_blocks: 64}
scheduler: {max_num_seqs: 4, max_num_batched_tokens: 64}
workload:
  synthetic: {num_requests: 6, prompt_len: {min: 8, max: 24}, output_len: {min: 2, max: 10}, seed: 7}
variants:
  - name: cont
    overrides: {}
  - name: stat
    overrides: {scheduler: {policy: static}}
"""


@pytest.fixture()
def small_recipe(tmp_path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(SMALL_RECIPE)
    return p


def by_name(report) -> dict:
    return {v.name: v.summary for v in report.variants}


def bench(name: str, max_requests: int | None = None) -> dict:
    return by_name(run_variants(load_recipe(RECIPES / f"{name}.yaml"), model=TINY, max_requests=max_requests))


def tiny_workload(recipe: Recipe):
    """The workload a recipe describes, built for the tiny model's vocabulary (the input, not a result)."""
    recipe = recipe.with_overrides({"model": TINY})
    cfg = get_preset("tiny")
    tok = load_tokenizer(recipe.model)
    special = set(tok.eos_token_ids) | {cfg.bos_token_id}
    return build_workload(recipe, cfg.vocab_size, special)


# --- outputs -----------------------------------------------------------------------------------

def test_json_and_svg_are_well_formed_and_agree(small_recipe, tmp_path, capsys):
    js, svg = tmp_path / "out.json", tmp_path / "out.svg"
    assert main(["bench", str(small_recipe), "--json", str(js), "--chart", str(svg)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(js.read_text())
    assert [v["name"] for v in data["variants"]] == ["cont", "stat"]
    assert data["num_requests"] == 6 and data["recipe"] == "small"
    for v in data["variants"]:
        s = v["summary"]
        assert s["finished"] == s["requests"] == 6
        assert s["generated_tokens"] > 0 and s["steps"] > 0
        assert set(s["ttft_ms"]) == {"p50", "p99", "mean", "count"}
        # the table prints what the JSON holds
        row = next(line for line in printed.splitlines() if line.startswith(v["name"] + " "))
        assert f"{s['throughput_tok_s']:.1f}" in row.split()
        assert str(s["steps"]) in row.split()
    assert v["overrides"] == {"scheduler": {"policy": "static"}}

    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg")
    ns = "{http://www.w3.org/2000/svg}"
    panels = root.findall(f"{ns}g")
    assert [p.get("data-metric") for p in panels] == [m.title for m in CHART_METRICS]
    for panel in panels:
        bars = panel.findall(f"{ns}rect[@class='bar']")
        assert [b.get("data-variant") for b in bars] == ["cont", "stat"]
        values = [float(b.get("data-value")) for b in bars]
        widths = [float(b.get("width")) for b in bars]
        top = max(values)
        for value, width in zip(values, widths):  # bar lengths are proportional to the values
            expected = max(widths) * value / top if top > 0 else 0.0
            assert math.isclose(width, expected, rel_tol=1e-3, abs_tol=0.02)
    throughput = [float(b.get("data-value")) for b in panels[0].findall(f"{ns}rect[@class='bar']")]
    assert throughput == pytest.approx([v["summary"]["throughput_tok_s"] for v in data["variants"]])


def test_json_to_stdout_is_one_document(small_recipe, capsys):
    assert main(["bench", str(small_recipe), "--json", "-", "--max-requests", "2", "--variant", "stat"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["variants"]] == ["stat"]
    assert data["variants"][0]["summary"]["requests"] == 2


def test_variants_share_one_workload_and_one_model(small_recipe):
    report = run_variants(load_recipe(small_recipe))
    a, b = (v.summary for v in report.variants)
    assert a.prompt_tokens == b.prompt_tokens and a.generated_tokens == b.generated_tokens
    recipes = variant_recipes(load_recipe(small_recipe), model=TINY)
    assert [r.scheduler.policy for _, _, r in recipes] == ["continuous", "static"]
    assert all(r.model.source == "random" for _, _, r in recipes)


@pytest.mark.parametrize("extra,needle", [
    (["--chart", "x.png"], "--chart x.png: PNG"),
    (["--chart", "x.pdf"], "expected a file name ending in .svg"),
    (["--model-override", "gpt-9"], "--model-override: unknown model 'gpt-9'"),
    (["--variant", "nope"], "--variant nope: "),
    (["--max-requests", "0"], "--max-requests: must be a positive integer"),
    (["--json", "/nonexistent/dir/x.json"], "--json /nonexistent/dir/x.json: folder"),
])
def test_bad_arguments_are_one_line_and_exit_2(small_recipe, capsys, extra, needle):
    assert main(["bench", str(small_recipe), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvscope: error: ") and needle in err and err.count("\n") == 1


def test_missing_recipe_is_one_line(capsys):
    assert main(["bench", "/nonexistent/r.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no such recipe file" in err and err.count("\n") == 1


# --- what the recipes show -----------------------------------------------------------------------

def test_prefix_cache_hits_above_80_percent_only_when_on():
    recipe = load_recipe(RECIPES / "prefix-cache.yaml")
    s = bench("prefix-cache")
    on, off = s["cache-on"], s["cache-off"]
    assert on.prefix_hit_rate > 0.8 and off.prefix_hit_rate == 0.0 and off.prefix_hit_tokens == 0
    # only the shared system prompt's full blocks can hit, and never for the first request
    syn, bs = recipe.workload.synthetic, recipe.cache.block_size
    assert on.prefix_hit_tokens <= (syn.num_requests - 1) * (syn.shared_prefix // bs) * bs
    assert on.prefix_lookup_tokens == on.prompt_tokens  # no preemption: each prompt is looked up once
    assert on.peak_kv_blocks < off.peak_kv_blocks  # one shared copy of the system prompt
    assert on.generated_tokens == off.generated_tokens


def test_paged_waste_is_far_below_contiguous_reservation():
    s = bench("paged-vs-contiguous")
    paged, contiguous = s["paged"], s["contiguous"]
    assert contiguous.internal_fragmentation_mean > 3 * paged.internal_fragmentation_mean
    # the max_model_len reservation the paged run is measured against wastes more still
    assert paged.contiguous_waste_mean > 3 * paged.internal_fragmentation_mean
    assert contiguous.peak_kv_blocks > paged.peak_kv_blocks


def test_static_needs_the_longest_output_of_each_batch_in_steps():
    recipe = load_recipe(RECIPES / "static-vs-continuous.yaml")
    items = tiny_workload(recipe)
    seats = recipe.scheduler.max_num_seqs
    outputs = [it.params.max_tokens for it in items]
    # static: batch b runs until its longest request is done; one token per step per request
    static_steps = sum(max(outputs[i:i + seats]) for i in range(0, len(outputs), seats))
    s = bench("static-vs-continuous")
    static, continuous = s["static"], s["continuous"]
    assert static.steps == static_steps
    assert max(outputs) <= continuous.steps < static.steps
    assert continuous.tokens_per_step_mean > static.tokens_per_step_mean
    assert static.generated_tokens == continuous.generated_tokens == sum(outputs)


def test_block_size_sweep_waste_grows_from_zero():
    s = bench("block-size-sweep", max_requests=8)
    waste = [s[f"bs{n}"].internal_fragmentation_mean for n in (1, 8, 16, 32, 128)]
    assert waste[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(waste)), waste
    # every variant holds the same tokens at its peak: blocks x block size never drops below block-size-1's
    peaks = [s[f"bs{n}"].peak_kv_blocks * n for n in (1, 8, 16, 32, 128)]
    assert all(p >= peaks[0] for p in peaks)


def test_small_pool_preempts_and_big_pool_does_not():
    s = bench("preemption", max_requests=10)
    small, big = s["small-pool"], s["big-pool"]
    assert small.preemptions > 0 and big.preemptions == 0
    assert small.peak_kv_usage == 1.0
    assert small.finished == big.finished == 10
    assert small.steps > big.steps


def test_a_bad_variant_override_names_the_variant_and_field(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(SMALL_RECIPE.replace("overrides: {scheduler: {policy: static}}",
                                      "overrides: {cache: {block_size: -1}}"))
    assert main(["bench", str(p)]) == 2
    err = capsys.readouterr().err
    assert "cache.block_size: must be a positive integer, got -1 (in variant 'stat')" in err
    assert err.count("\n") == 1
