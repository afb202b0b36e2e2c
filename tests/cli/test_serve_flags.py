"""`kvscope serve MODEL_OR_RECIPE` with vLLM's engine flags: a model is served with vLLM's CPU serving defaults, a
recipe with its own values, each flag given overrides either under vLLM's meaning, and a bad value is one line
naming the flag with exit code 2.

Oracles: vLLM 0.32's defaults for an API server on a CPU (arg_utils: 128 seqs, 2048 batched tokens; prefix caching
and chunked prefill on; max_model_len the model's context), the recipe file's own values, and the engine built
from the result (its scheduler's limits, its pool).
"""

from __future__ import annotations

import subprocess
import time

import httpx
import openai
import pytest

from kvscope.cli.serve_args import EngineArgs, serve_recipe_for
from kvscope.config.recipe import load_recipe
from kvscope.engine.llm_engine import LLMEngine
from kvscope.serve.server.api_server import ServeOptions, ServerThread, free_port
from support.cli import KVSCOPE, one_line_error
from support.paths import RECIPES

QUICKSTART = str(RECIPES / "quickstart.yaml")


def test_a_model_gets_vllms_cpu_serving_defaults_and_its_own_context_length():
    recipe = serve_recipe_for("tiny", EngineArgs())
    s = recipe.scheduler
    assert (s.max_num_seqs, s.max_num_batched_tokens, s.chunked_prefill) == (128, 2048, True)
    assert recipe.cache.prefix_caching and recipe.model.source == "random" and recipe.model.shape == "tiny"
    engine = LLMEngine(recipe)
    assert engine.max_model_len == engine.config.max_position_embeddings
    assert engine.scheduler.max_num_seqs == 128


def test_flags_override_a_recipe_and_leave_the_rest_as_written():
    written = load_recipe(QUICKSTART)
    recipe = serve_recipe_for(QUICKSTART, EngineArgs(max_num_seqs=3, block_size=8, enable_prefix_caching=False,
                                                      num_gpu_blocks_override=40, dtype="float"))
    assert (recipe.scheduler.max_num_seqs, recipe.cache.block_size, recipe.cache.num_blocks) == (3, 8, 40)
    assert recipe.cache.prefix_caching is False and recipe.cache.memory_gib is None and recipe.dtype == "float32"
    assert recipe.scheduler.max_num_batched_tokens == written.scheduler.max_num_batched_tokens
    assert recipe.model == written.model and recipe.sampling == written.sampling
    assert serve_recipe_for(QUICKSTART, EngineArgs()).raw == written.raw  # no flag: the recipe as it is


def test_kv_cache_memory_bytes_sizes_the_pool_and_replaces_the_recipes_block_count():
    recipe = serve_recipe_for("tiny", EngineArgs(kv_cache_memory_bytes=8 * 2**20, block_size=16))
    engine = LLMEngine(recipe)
    assert recipe.cache.num_blocks is None
    assert engine.num_blocks == 8 * 2**20 // engine.bytes_per_block


def test_speculative_config_json_becomes_the_speculative_section():
    recipe = serve_recipe_for("tiny", EngineArgs(speculative_config='{"method": "ngram", "num_speculative_tokens": 3,'
                                                                    ' "prompt_lookup_max": 2}'))
    spec = recipe.speculative
    assert spec is not None and (spec.method, spec.num_speculative_tokens, spec.prompt_lookup_max) == ("ngram", 3, 2)
    drafted = serve_recipe_for("tiny", EngineArgs(speculative_config='{"model": "tiny", "num_speculative_tokens": 2}'))
    assert drafted.speculative is not None and drafted.speculative.method == "draft_model"
    assert drafted.speculative.model is not None and drafted.speculative.model.source == "random"


@pytest.mark.parametrize("args,needles", [
    (["tiny", "--max-num-seqs", "0"], ("--max-num-seqs: must be a positive integer, got 0",)),
    (["tiny", "--block-size", "-16"], ("--block-size: must be a positive integer, got -16",)),
    (["tiny", "--max-model-len", "0"], ("--max-model-len",)),
    (["tiny", "--dtype", "int4"], ("--dtype: must be one of", "'int4'")),
    (["tiny", "--speculative-config", "{bad"], ("--speculative-config: not JSON",)),
    (["tiny", "--speculative-config", '{"methd": "ngram"}'], ("--speculative-config: methd: unknown key",
                                                              "did you mean 'method'")),
    (["tiny", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 0}'],
     ("--speculative-config: num_speculative_tokens: must be a positive integer, got 0",)),
    (["tiny", "--gpu-memory-utilization", "0.5"], ("--gpu-memory-utilization: applies to a simulated GPU",)),
    (["tiny", "--tensor-parallel-size", "2"], ("--tensor-parallel-size",)),
    (["tiny", "--kv-cache-memory-bytes", "0"], ("--kv-cache-memory-bytes: must be a positive integer",)),
    (["tiny", "--num-gpu-blocks-override", "8", "--kv-cache-memory-bytes", "9000"], ("not both",)),
    (["tiny", "--kv-cache-dtype", "fp8"], ("--kv-cache-dtype",)),
    (["tiny", "--scheduling-policy", "priority"], ("--scheduling-policy",)),
    (["no-such-model"], ("no-such-model: not a recipe",)),
    (["/no/such/model.gguf"], ("/no/such/model.gguf: no such GGUF file",)),
])
def test_a_bad_flag_is_one_line_naming_it_and_exit_2(args, needles):
    proc = subprocess.run(KVSCOPE + ["serve", *args, "--port", str(free_port())], capture_output=True, text=True,
                          timeout=120)
    one_line_error(proc, *needles)


def test_kvscope_serve_a_model_starts_and_answers_under_its_name():
    port = free_port()
    proc = subprocess.Popen(KVSCOPE + ["serve", "tiny", "--port", str(port), "--max-num-seqs", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, models = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert models is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert [m["id"] for m in models["data"]] == ["tiny"]
        out = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "tiny", "prompt": "hi",
                                                                          "max_tokens": 3}, timeout=30).json()
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(20)


def _sampled(seed: int | None, prompts: int = 2) -> list[str]:
    options = ServeOptions(port=0, seed=seed)
    with ServerThread(serve_recipe_for("tiny", EngineArgs()), options) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)
        return [client.completions.create(model="tiny", prompt="same prompt", max_tokens=12, temperature=5.0,
                                          extra_body={"ignore_eos": True}).choices[0].text for _ in range(prompts)]


def test_seed_seeds_the_engine_not_each_request():
    first, again, other = _sampled(7), _sampled(7), _sampled(8)
    assert first == again  # the same seed: the same draws, request after request
    assert first != other
    assert first[0] != first[1]  # requests without a seed draw on from the engine's generator
