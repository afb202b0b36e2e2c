"""`kvscope ... >&-`: started with standard output closed, a command does its work, then says in one line that
its answer cannot be written, and exits 2 (as on a full disk), never with a traceback."""

from __future__ import annotations

import json
import subprocess

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


def closed_stdout(*args: str) -> subprocess.CompletedProcess:
    """The command as a shell runs `kvscope ARGS >&-`."""
    return subprocess.run(["bash", "-c", '"$@" >&-', "bash", *KVSCOPE, *args], stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=300)


@pytest.mark.parametrize("args", [("kv", "llama-2-7b"), ("kv", "llama-2-7b", "--json"), ("roofline", "llama-2-7b")])
def test_oneshot_commands(args) -> None:
    one_line_error(closed_stdout(*args), "cannot write to standard output: it is closed")


@pytest.mark.parametrize("extra", [(), ("--headless", "--json")])
def test_run_completes_its_recording_and_says_the_summary_cannot_be_written(tmp_path, extra) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY)
    recording = tmp_path / "events.jsonl"
    one_line_error(closed_stdout("run", str(recipe), "--record", str(recording), *extra),
                   "cannot write to standard output: it is closed")
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert sum(1 for e in lines if e.get("kind") == "request" and e.get("what") == "finished") == 2
