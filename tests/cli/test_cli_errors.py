"""Bad recipes end with one line on stderr naming what and where, and exit code 2; good requests still run."""

import json
import subprocess
from pathlib import Path

import pytest

from support.cli import KVSCOPE, one_line_error

TINY = """
name: tiny
model: {source: random, shape: tiny, seed: 0}
cache: {block_size: 4, num_blocks: 64}
scheduler: {max_model_len: 64}
sampling: {max_tokens: 4, ignore_eos: true}
workload: {prompts: ["hello there", "general kenobi"]}
"""


def run(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return subprocess.run(KVSCOPE + ["run", str(path), "--headless", *extra], capture_output=True, text=True,
                          timeout=300)


def test_good_recipe_runs(tmp_path):
    proc = run(tmp_path, TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["finished"] == 2 and data["generated_tokens"] == 8


@pytest.mark.parametrize("text,needles", [
    ("name: [unclosed\n", ("r.yaml", "malformed YAML", "line ")),
    (TINY.replace("block_size: 4", "blok_size: 4"), ("cache.blok_size", "did you mean 'block_size'")),
    (TINY.replace("block_size: 4", "block_size: -4"), ("cache.block_size: must be a positive integer, got -4",)),
    (TINY.replace("num_blocks: 64", "num_blocks: 0"), ("cache.num_blocks",)),
    (TINY.replace("{source: random, shape: tiny, seed: 0}", "{source: gguf, path: /no/such/model.gguf}"),
     ("/no/such/model.gguf",)),
])
def test_bad_recipe_is_one_line_and_exit_2(tmp_path, text, needles):
    one_line_error(run(tmp_path, text), *needles)


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 7)
    one_line_error(run(tmp_path, TINY.replace("{source: random, shape: tiny, seed: 0}",
                                              f"{{source: gguf, path: {bad}}}")), str(bad))


def test_prompt_longer_than_context_is_rejected_and_others_run(tmp_path):
    text = TINY.replace('prompts: ["hello there", "general kenobi"]',
                        'prompts: ["hello there", "' + "x" * 100 + '", "general kenobi"]')
    proc = run(tmp_path, text, "--json")
    line = one_line_error(proc, "workload request 1", "longer than the context")
    assert "max_model_len 64" in line
    data = json.loads(proc.stdout)
    assert data["finished"] == 2 and data["generated_tokens"] == 8  # the other requests ran


def test_pool_too_small_for_a_single_request(tmp_path):
    text = TINY.replace("num_blocks: 64", "num_blocks: 2")
    one_line_error(run(tmp_path, text), "r.yaml: cache: a pool of 2 blocks", "holds no request")


def test_request_bigger_than_the_pool_is_rejected_and_others_run(tmp_path):
    text = TINY.replace("num_blocks: 64", "num_blocks: 5").replace(
        'prompts: ["hello there", "general kenobi"]', 'prompts: ["hi", "' + "y" * 40 + '", "yo"]')
    proc = run(tmp_path, text, "--json")
    one_line_error(proc, "workload request 1", "needs 12 KV blocks", "the pool has 5")
    assert json.loads(proc.stdout)["finished"] == 2


def test_threads_flag(tmp_path):
    one_line_error(run(tmp_path, TINY, "--threads", "0"), "--threads", "at least 1")
    proc = run(tmp_path, TINY, "--json", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["finished"] == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("extra", [(), ("--headless",), ("--headless", "--json")])
def test_output_that_cannot_be_written_is_one_line(tmp_path, extra):
    """`kvscope run ... > /dev/full`: the run completes, printing its answer fails, and that is one line."""
    path = tmp_path / "r.yaml"
    path.write_text(TINY)
    with open("/dev/full", "w") as full:
        proc = subprocess.run(KVSCOPE + ["run", str(path), *extra], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    one_line_error(proc, "cannot write to standard output", "No space left on device")


SPEC = TINY + "speculative: {method: ngram, num_speculative_tokens: 2}\n"


@pytest.mark.parametrize("text,needles", [
    (SPEC.replace("method: ngram", "method: medusa"), ("speculative.method", "medusa", "ngram, layerskip")),
    (SPEC.replace("num_speculative_tokens: 2", "num_speculative_tokens: 0"),
     ("speculative.num_speculative_tokens: must be a positive integer, got 0",)),
    (SPEC.replace("method: ngram", "method: layerskip, num_layers: 2"),
     ("speculative.num_layers: must be between 1 and 1", "has 2 layers), got 2")),
    (SPEC.replace("method: ngram", "method: layerskip"), ("speculative.num_layers",)),
    (SPEC.replace("method: ngram", "method: draft_model, model: {source: random, shape: smollm2-135m}"),
     ("speculative.model: its vocabulary has 49152 tokens, the target's 512",)),
    (SPEC.replace("method: ngram", "method: draft_model"), ("speculative.model", "draft_model needs a model")),
    (SPEC.replace("method: ngram", "method: draft_model, model: {source: random, shape: nosuch}"),
     ("speculative.model.shape", "nosuch")),
    (SPEC + "scheduler: {policy: static}\n", ("speculative", "continuous")),
])
def test_bad_speculative_config_is_one_line_and_exit_2(tmp_path, text, needles):
    if "policy: static" in text:
        text = text.replace("scheduler: {max_model_len: 64}\n", "")
    one_line_error(run(tmp_path, text), *needles)
