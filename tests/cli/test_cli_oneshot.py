"""`kvscope kv` and `kvscope roofline` end to end: output, JSON, one-line errors with exit code 2, no torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from kvscope.config.model_presets import get_preset
from kvscope.costmodel.devices import get_device
from kvscope.costmodel.kv_estimate import estimate_kv
from support.cli import KVSCOPE, one_line_error
from support.paths import REPO_ROOT

ROOT = REPO_ROOT


def kvscope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KVSCOPE, *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_kv_text_output_shows_both_gqa_and_mha_figures() -> None:
    out = kvscope("kv", "llama-2-70b", "--context", "4096", "--gpus", "4")
    assert out.returncode == 0, out.stderr
    assert "327,680 B" in out.stdout and "2,621,440 B" in out.stdout
    assert "MHA-equivalent" in out.stdout and "327,680 B applies" in out.stdout
    for section in ("KV per token", "Memory on 4 x H100-80GB", "Internal fragmentation",
                    "Contiguous max-length reservation"):
        assert section in out.stdout


def test_kv_json_matches_the_estimator() -> None:
    out = kvscope("kv", "llama-2-7b", "--context", "2000", "--batch", "8", "--gpu", "A100-80GB",
                  "--kv-dtype", "fp8", "--block-size", "32", "--mem-util", "0.85", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = estimate_kv(get_preset("llama-2-7b"), get_device("A100-80GB"), context=2000, batch=8, kv_dtype="fp8",
                       block_size=32, mem_util=0.85).to_dict()
    assert got == json.loads(json.dumps(want))
    assert got["bytes_per_token"] == 262_144 and got["batch"] == 8


def test_kv_requests_alias_and_gpu_mem() -> None:
    out = kvscope("kv", "smollm2-135m", "--context", "1024", "--requests", "3", "--gpu-mem", "1", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["batch"] == 3 and got["device_bytes"] == 1 << 30


def test_kv_reads_a_gguf_file() -> None:
    from kvscope.engine.checkpoint.resolve import packaged_smollm2_gguf

    out = kvscope("kv", packaged_smollm2_gguf(), "--context", "8192", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bytes_per_token"] == 2 * 30 * 3 * 64 * 2


def test_roofline_table_and_plot() -> None:
    out = kvscope("roofline", "llama-3.1-8b", "--batch", "8", "--context", "2048", "--phase", "decode")
    assert out.returncode == 0, out.stderr
    for op in ("embed", "attn_norm", "qkv", "rope", "kv_write", "attention", "o_proj", "mlp_norm", "mlp",
               "final_norm", "lm_head", "total"):
        assert f" {op}" in out.stdout
    assert "tokens/s" in out.stdout and "FLOP/byte" in out.stdout and "ridge" in out.stdout


def test_roofline_json() -> None:
    out = kvscope("roofline", "smollm2-135m", "--phase", "prefill", "--context", "512", "--gpu", "L4", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["phase"] == "prefill" and got["tokens_per_step"] == 512
    assert got["total_flops"] == sum(op["flops"] for op in got["ops"])
    assert got["peak_flops"] == pytest.approx(121e12)


@pytest.mark.parametrize("args, needle", [
    (["kv", "gpt-9"], "unknown model 'gpt-9'"),
    (["kv", "llama-2-7b", "--gpu", "V100"], "unknown GPU 'V100'"),
    (["kv", "llama-2-7b", "--context", "-5"], "--context must be a positive"),
    (["kv", "pyproject.toml"], "pyproject.toml: not a model config"),
    (["kv", "Makefile"], "Makefile: not a model config"),
    (["kv", "missing.gguf"], "missing.gguf: cannot open"),
    (["kv", "llama-2-7b", "--kv-dtype", "fp4"], "unknown --kv-dtype 'fp4'"),
    (["kv", "llama-2-7b", "--context", "ten"], "--context"),
    (["roofline", "llama-2-7b", "--phase", "train"], "--phase must be prefill or decode"),
    (["roofline", "llama-2-7b", "--batch", "0"], "--batch must be a positive"),
    (["roofline", "nosuch"], "unknown model 'nosuch'"),
    (["kv", "llama-2-7b", "--gpu-mem", "inf"], "--gpu-mem must be a positive, finite number"),
    (["kv", "llama-2-7b", "--gpu-mem", "nan"], "--gpu-mem must be a positive, finite number"),
    # typer's own usage errors keep the same contract
    (["kv", "llama-2-7b", "--bogus"], "No such option: --bogus"),
    (["kv"], "Missing argument 'MODEL'"),
    (["roofline", "llama-2-7b", "--batch"], "--batch"),
    (["nosuch"], "No such command 'nosuch'"),
    (["bench"], "Missing argument 'RECIPE'"),
])
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], needle: str) -> None:
    out = kvscope(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("kvscope: error:") and needle in lines[0]
    assert "Traceback" not in out.stderr


def test_oneshot_commands_import_no_torch() -> None:
    code = ("import sys, kvscope.cli.commands.kv, kvscope.cli.commands.roofline, kvscope.costmodel.roofline_report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'gguf', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


MINIMAL = {"model_type": "llama", "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 32000}  # no intermediate_size: the KV cache does not need it


def write_config(tmp_path, cfg: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_kv_of_a_config_without_the_mlp_width_gives_the_kv_figures(tmp_path) -> None:
    config = write_config(tmp_path, MINIMAL)
    out = kvscope("kv", config, "--context", "4096", "--batch", "4", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["bytes_per_token"] == 2 * 16 * 8 * 64 * 2 and got["batch_bytes"] == 4 * 4096 * got["bytes_per_token"]
    for field in ("num_params", "weights_bytes", "kv_budget_bytes", "num_blocks", "max_requests", "batch_fits",
                  "contiguous_max_requests"):
        assert got[field] is None, field  # what needs the weights' size is not known
    text = kvscope("kv", config, "--context", "4096")
    assert text.returncode == 0, text.stderr
    assert "32,768 B" in text.stdout and f"{config} gives no intermediate_size" in text.stdout
    assert re.search(r"^\s+KV budget\s+unknown", text.stdout, re.M)
    assert kvscope("kv", write_config(tmp_path, {**MINIMAL, "intermediate_size": 5632}), "--json").returncode == 0


def test_what_needs_the_mlp_width_still_says_so(tmp_path) -> None:
    config = write_config(tmp_path, MINIMAL)
    line = one_line_error(kvscope("roofline", config), "'intermediate_size' missing")
    assert config in line
    one_line_error(kvscope("kv", write_config(tmp_path, {**MINIMAL, "intermediate_size": -1})),
                   config, "'intermediate_size' must be a positive integer")
    one_line_error(kvscope("kv", write_config(tmp_path, {**MINIMAL, "num_hidden_layers": 0})),
                   config, "'num_hidden_layers' must be a positive integer")
