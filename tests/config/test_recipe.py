"""Recipe validation: every bad input is one line naming the file and the field."""

import pytest

from kvscope.config.model_spec import GGUFModelSpec, RandomModelSpec
from kvscope.config.recipe import Recipe, load_recipe
from kvscope.errors import RecipeError

GOOD = """
name: t
model: {source: random, shape: tiny}
cache: {block_size: 4, num_blocks: 32}
workload: {prompts: ["hello"]}
"""


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path, text) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_good_recipe_loads(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.cache.block_size == 4 and r.cache.num_blocks == 32 and r.model.shape == "tiny"
    assert r.workload.prompts == ["hello"]


def test_negative_block_size_names_the_field(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("block_size: 4", "block_size: -4"))
    assert msg.endswith("cache.block_size: must be a positive integer, got -4")
    assert "r.yaml" in msg


def test_unknown_key_suggests_closest(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("block_size: 4", "blok_size: 4"))
    assert "cache.blok_size: unknown key (did you mean 'block_size'?)" in msg


def test_malformed_yaml_names_line(tmp_path):
    msg = error_of(tmp_path, "name: [unclosed\ncache: {block_size: 4}\n")
    assert "malformed YAML" in msg and "line" in msg


def test_missing_file():
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe("/nonexistent/recipe.yaml")


@pytest.mark.parametrize("patch,field", [
    (("policy", "policy: greedy"), "scheduler.policy"),
    (("workload: {prompts: [\"hello\"]}", "workload: {}"), "workload"),
    (("model: {source: random, shape: tiny}", "model: {source: magic}"), "model.source"),
])
def test_bad_values(tmp_path, patch, field):
    text = GOOD + "scheduler: {policy: continuous}\n"
    text = text.replace(*patch) if patch[0] != "policy" else text.replace("policy: continuous", patch[1])
    assert f"{field}:" in error_of(tmp_path, text)


def test_synthetic_lengths_and_overrides():
    r = Recipe.from_dict({"workload": {"synthetic": {"num_requests": 3, "prompt_len": 10,
                                                     "output_len": {"min": 2, "max": 5}}},
                          "variants": [{"name": "small", "overrides": {"cache": {"block_size": 1}}}]})
    assert r.workload.synthetic.prompt_len.min == 10 == r.workload.synthetic.prompt_len.max
    v = r.with_overrides(r.variants[0]["overrides"], name="small")
    assert v.cache.block_size == 1 and v.name == "small" and v.workload.synthetic.num_requests == 3
    with pytest.raises(RecipeError, match=r"prompt_len: max \(1\) must be >= min \(4\)"):
        Recipe.from_dict({"workload": {"synthetic": {"prompt_len": {"min": 4, "max": 1}}}})


def test_model_specs_are_one_per_source():
    r = Recipe.from_dict({"model": {"source": "gguf", "path": "x.gguf"}, "workload": {"prompts": ["a"]}})
    assert isinstance(r.model, GGUFModelSpec) and r.model.path == "x.gguf"
    v = r.with_overrides({"model": {"source": "random", "shape": "tiny"}})  # another source: its own keys only
    assert v.model == RandomModelSpec(shape="tiny") and hash(v.model) == hash(RandomModelSpec(shape="tiny"))
    assert r.with_overrides({"model": {"path": "y.gguf"}}).model.path == "y.gguf"  # the same source: merged
    with pytest.raises(RecipeError, match=r"model\.path: unknown key"):
        Recipe.from_dict({"model": {"source": "random", "path": "x"}, "workload": {"prompts": ["a"]}})
