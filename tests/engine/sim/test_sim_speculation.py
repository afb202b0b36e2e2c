"""Speculative decoding on a simulated device: the acceptance model against its distribution, the extremes
(acceptance 0: one token per verification; 1: k + 1), repeatable runs, the draft's cost on the clock, the
counters in the run's summary, and the recipe rules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kvscope.config.recipe import Recipe
from kvscope.engine.session import RunSession
from kvscope.engine.sim.speculation import accepted_drafts
from kvscope.errors import RecipeError
from kvscope.events.bus import EventBus, EventList
from kvscope.events.records import SpecDecode
from kvscope.inspector.metrics import Metrics
from kvscope.inspector.spec_metrics import expected_tokens_per_step

Z = 5.0  # standard errors a mean may stray (a seeded draw: this bounds the chance a seed change fails it)


def length_moments(a: float, k: int) -> tuple[float, float]:
    """Mean and variance of the tokens a verification of k drafts emits, 1 + min(k, geometric), from the
    distribution itself: P(L = j + 1) = a^j (1 - a) for j < k, P(L = k + 1) = a^k."""
    probs = [a ** j * (1 - a) for j in range(k)] + [a ** k]
    mean = sum((j + 1) * p for j, p in enumerate(probs))
    return mean, sum((j + 1 - mean) ** 2 * p for j, p in enumerate(probs))


def sim_recipe(rate: float, k: int = 4, method: str = "ngram", **over) -> Recipe:
    spec = {"method": method, "num_speculative_tokens": k, "acceptance_rate": rate}
    if method == "draft_model":
        spec["model"] = {"source": "preset", "name": "llama-3.2-1b"}
    return Recipe.from_dict({
        "device": "sim", "dtype": "bfloat16", "model": {"source": "preset", "name": "llama-3.1-8b"},
        "sim": {"gpu": "H100-80GB"}, "sampling": {"ignore_eos": True}, "speculative": spec,
        "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 2048},
        "workload": {"synthetic": {"num_requests": 16, "prompt_len": {"min": 32, "max": 64},
                                   "output_len": {"min": 150, "max": 200}, "seed": 1}}, **over})


def run(recipe: Recipe) -> tuple[list[SpecDecode], Metrics, RunSession]:
    bus = EventBus()
    events = bus.subscribe(EventList())
    metrics = bus.subscribe(Metrics())
    session = RunSession(recipe, bus=bus)
    session.run()
    return [e for e in events.events if isinstance(e, SpecDecode)], metrics, session


@pytest.mark.parametrize("a,k", [(0.5, 4), (0.7, 4), (0.9, 8), (0.3, 1)])
def test_accepted_drafts_follow_the_truncated_geometric(a, k):
    n = 20_000
    gen = torch.Generator().manual_seed(11)
    lengths = [1 + accepted_drafts(a, k, gen) for _ in range(n)]
    mean, var = length_moments(a, k)
    assert mean == pytest.approx(expected_tokens_per_step(a, k))  # (1 - a^(k+1)) / (1 - a)
    assert abs(sum(lengths) / n - mean) < Z * math.sqrt(var / n)
    for j in range(k + 1):  # each length's share, within its binomial error
        p = a ** j * (1 - a) if j < k else a ** k
        share = sum(1 for x in lengths if x == j + 1) / n
        assert abs(share - p) < Z * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("a", [0.5, 0.8])
def test_simulated_mean_accepted_length_is_the_geometric_expectation(a):
    """The engine's verifications (k varies near a request's end: the scheduler caps it) against the sum of
    each one's expectation, within Z standard errors of the summed variances."""
    spec, metrics, _ = run(sim_recipe(a))
    n = len(spec)
    assert n > 500
    moments = [length_moments(a, e.num_draft_tokens) for e in spec]
    expected = sum(m for m, _ in moments) / n
    se = math.sqrt(sum(v for _, v in moments)) / n
    summary = metrics.summary().spec_decode
    assert summary is not None and summary.num_drafts == n
    assert abs(summary.mean_acceptance_length - expected) < Z * se
    examined = summary.num_accepted_tokens + sum(e.num_accepted < e.num_draft_tokens for e in spec)
    assert abs(summary.per_token_acceptance - a) < Z * math.sqrt(a * (1 - a) / examined)


def test_acceptance_zero_gives_one_token_and_one_gives_k_plus_one():
    zero, m0, _ = run(sim_recipe(0.0))
    assert zero and all(e.num_accepted == 0 for e in zero)
    assert m0.summary().spec_decode.mean_acceptance_length == 1.0
    one, m1, _ = run(sim_recipe(1.0))
    assert all(e.num_accepted == e.num_draft_tokens for e in one)
    assert sum(e.num_draft_tokens == 4 for e in one) > 0.9 * len(one)
    s = m1.summary()
    assert s.spec_decode.acceptance_rate == 1.0
    assert s.spec_decode.mean_acceptance_length == pytest.approx(1 + s.spec_decode.mean_k)
    # every request's tokens: one from its prefill, k + 1 per verification, one per step the scheduler left
    # it no room for drafts (its last token)
    assert s.requests + sum(1 + e.num_accepted for e in one) <= s.generated_tokens <= 2 * s.requests + sum(
        1 + e.num_accepted for e in one)


def test_a_simulated_run_repeats_and_a_seed_changes_it():
    """The draws come from the engine's generator (seeded), or a request's own under sampling.seed."""
    first = [e.num_accepted for e in run(sim_recipe(0.6))[0]]
    assert first == [e.num_accepted for e in run(sim_recipe(0.6))[0]]
    other = sim_recipe(0.6).with_overrides({"sampling": {"seed": 8}})
    assert first != [e.num_accepted for e in run(other)[0]]


def test_the_draft_model_costs_time_and_prompt_lookup_none():
    """Same acceptance, same steps: the 1B draft's passes add draft time; free drafts add none; both beat
    plain decoding at high acceptance."""
    free, m_free, s_free = run(sim_recipe(0.9))
    drafted, m_draft, s_draft = run(sim_recipe(0.9, method="draft_model"))
    assert [e.num_accepted for e in free] == [e.num_accepted for e in drafted]
    assert m_free.summary().spec_decode.draft_time_s == 0.0
    draft_s = m_draft.summary().spec_decode.draft_time_s
    assert draft_s > 0 and s_draft.clock_s == pytest.approx(s_free.clock_s + draft_s, rel=1e-6)
    off = sim_recipe(0.9).with_overrides({"speculative": None})
    _, m_off, s_off = run(off)
    assert m_off.summary().spec_decode is None
    assert s_off.clock_s > 1.5 * s_draft.clock_s


@pytest.mark.parametrize("data,needle", [
    ({"device": "sim", "model": {"source": "preset", "name": "llama-3.1-8b"}, "speculative": {"method": "ngram"}},
     "speculative.acceptance_rate: a simulated device needs it"),
    ({"device": "cpu", "speculative": {"method": "ngram", "acceptance_rate": 0.5}},
     "speculative.acceptance_rate: only a simulated device reads it"),
    ({"device": "sim", "model": {"source": "preset", "name": "llama-3.1-8b"},
      "speculative": {"method": "ngram", "acceptance_rate": 1.5}},
     "speculative.acceptance_rate: must be a finite number between 0.0 and 1.0, got 1.5"),
])
def test_acceptance_rate_rules_name_the_field(data, needle):
    with pytest.raises(RecipeError, match="^<dict>: " + needle.replace(".", r"\.")):
        Recipe.from_dict({"workload": {"prompts": ["x"]}, **data})


def test_a_draft_of_another_vocabulary_is_refused_on_a_simulated_device():
    bad = sim_recipe(0.5, method="draft_model").with_overrides(
        {"speculative": {"model": {"source": "preset", "name": "llama-2-7b"}}})
    with pytest.raises(RecipeError, match="speculative.model: its vocabulary has 32000 tokens"):
        RunSession(bad)


def test_acceptance_measured_on_the_real_engine(tmp_path, capsys):
    """acceptance_from: a real run's `kvscope run --headless --json` summary sets the simulated rate."""
    from kvscope.cli.commands.headless import run_headless

    real = Recipe.from_dict({"model": {"source": "random", "shape": "tiny", "seed": 0}, "device": "cpu",
                             "attention_backend": "torch", "sampling": {"max_tokens": 40, "ignore_eos": True},
                             "speculative": {"method": "ngram", "num_speculative_tokens": 3},
                             "workload": {"prompts": ["abcabcabcabcabcabc", "the cat the cat the cat"]}})
    assert run_headless(real, as_json=True) == 0
    path = tmp_path / "run.json"
    path.write_text(capsys.readouterr().out)
    measured = json.loads(path.read_text())["spec_decode"]["per_token_acceptance"]
    recipe = sim_recipe(0.5).with_overrides({"speculative": {"acceptance_rate": None,
                                                             "acceptance_from": str(path)}})
    session = RunSession(recipe)
    assert session.engine.sim.runner.acceptance_rate == measured
    (tmp_path / "bad.json").write_text('{"spec_decode": null}')
    for name, needle in (("missing.json", "cannot read"), ("bad.json", "expected a `kvscope run --headless --json` "
                                                                       "summary of a speculative run")):
        bad = recipe.with_overrides({"speculative": {"acceptance_from": str(tmp_path / name)}})
        with pytest.raises(RecipeError, match=f"speculative.acceptance_from: .*{name}: {needle}"):
            RunSession(bad)
    with pytest.raises(RecipeError, match="speculative.acceptance_from: give acceptance_rate or acceptance_from"):
        recipe.with_overrides({"speculative": {"acceptance_rate": 0.5}})
