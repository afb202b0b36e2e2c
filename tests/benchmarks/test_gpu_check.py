"""benchmarks/gpu_check.sh --dry-run: the GPU check's own code runs on the CPU, so it cannot rot between GPUs.

The dry run must write its JSON and markdown, give every step a status, pass every step a CPU can run and
skip the others with a reason; the runner must keep going past a failing or hanging step; the Nsight
Compute CSV parser must sum each metric over the kernels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from support.paths import REPO_ROOT

ROOT = REPO_ROOT
CPU_STEPS = ("environment", "ceilings", "kernel_tests", "kernels_bench", "engine_equality", "engine_throughput",
             "trace")
GPU_ONLY = ("kernels_flex", "ncu", "nsys")


def _gpu_check():
    spec = importlib.util.spec_from_file_location("kvscope_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU half of the check")
def test_dry_run_writes_a_report_and_passes_every_cpu_step(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    p = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)], cwd=ROOT,
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    table = (out / "gpu_check.md").read_text()
    assert report["dry_run"] is True and (out / "gpu_check.log").stat().st_size > 0
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == [s.name for s in _gpu_check().PLAN]
    assert all(s["status"] in ("ok", "failed", "skipped") for s in steps.values())
    for name in CPU_STEPS:
        assert steps[name]["status"] == "ok", (name, steps[name]["reason"], steps[name]["log_tail"])
    for name in GPU_ONLY:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"], name
    assert steps["calibrate"]["status"] in ("ok", "skipped")
    # the numbers the table is made of
    assert steps["engine_equality"]["numbers"]["shapes"]["tiny-gqa3"]["identical"] == "2/2"
    assert steps["trace"]["numbers"]["kernel_slices"] > 0 and steps["trace"]["numbers"]["nvtxt_records"] > 0
    assert "passed" in steps["kernel_tests"]["numbers"]["pytest"]
    rows = steps["engine_throughput"]["numbers"]["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [("eager", 1), ("eager", 4)]
    assert all(r["decode_tok_s"] > 0 and r["x_floor"] > 0 for r in rows)  # the floor used the ceilings' copy
    assert steps["engine_cuda_graphs"]["status"] == "skipped" and steps["engine_cuda_graphs"]["reason"]
    # one row per step, and the table is the last thing printed (the device reply keeps only the tail)
    assert all(f"| {name} | {steps[name]['status']} |" in table for name in steps)
    assert p.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])


def test_a_failing_or_hanging_step_does_not_stop_the_others(tmp_path):
    gc = _gpu_check()
    py = sys.executable
    gc.PLAN = [
        gc.Step("boom", 20, 20, lambda ctx: [py, "-c", "raise SystemExit(3)"]),
        gc.Step("hang", 2, 2, lambda ctx: [py, "-c", "import time; time.sleep(30)"]),
        gc.Step("fine", 20, 20, lambda ctx: [py, "-c", "print('RESULT {\"answer\": 42}')"]),
        gc.Step("gpu", 20, None, lambda ctx: [py, "-c", "raise SystemExit(1)"], cpu_reason="needs a GPU"),
    ]
    ctx = gc.Ctx(True, tmp_path, tmp_path)
    assert gc.run_all(ctx, None) == 1
    steps = {s["name"]: s for s in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]}
    assert (steps["boom"]["status"], steps["boom"]["reason"]) == ("failed", "exit 3")
    assert steps["hang"]["status"] == "failed" and "timed out" in steps["hang"]["reason"]
    assert steps["hang"]["seconds"] < 15
    assert (steps["fine"]["status"], steps["fine"]["numbers"]) == ("ok", {"answer": 42})
    assert (steps["gpu"]["status"], steps["gpu"]["reason"]) == ("skipped", "needs a GPU")


def test_ncu_csv_metrics_are_summed_over_kernels():
    gc = _gpu_check()
    text = ('==PROF== Connected to process 1\n'
            '"ID","Kernel Name","dram__bytes_read.sum","dram__bytes_write.sum"\n'
            '"","","byte","byte"\n'
            '"0","attn_kernel","1,000","24"\n'
            '"1","reduce_kernel","500","8"\n'
            'COST {"flops": 1, "bytes": 2}\n')
    sums = gc.parse_ncu_csv(text)
    assert sums == {"kernels": 2.0, "dram__bytes_read.sum": 1500.0, "dram__bytes_write.sum": 32.0}
    assert gc.parse_ncu_csv("==ERROR== no kernels were profiled\n") == {}


def test_the_table_is_written_whatever_shape_a_steps_numbers_take():
    gc = _gpu_check()
    results = [gc.StepResult("engine_throughput", "ok", 1.0, 9, {"rows": [{"mode": "eager"}]}),  # no tok/s
               gc.StepResult("ncu", "ok", 2.0, 9, {"mlp": {"bytes_ratio": 1.05, "flops_ratio": None}}),
               gc.StepResult("nsys", "failed", 3.0, 9, {"live_files": ["live.qdstrm"]}, "no .nsys-rep was produced")]
    table = gc.markdown(results, {"date": "today", "device": "H200", "dry_run": False, "seconds": 6.0})
    rows = table.splitlines()[4:]
    assert rows[0].startswith("| engine_throughput | ok | 1 | (numbers not tabulated: KeyError)")
    assert rows[1] == "| ncu | ok | 2 | mlp: DRAM bytes 1.05x model, FLOPs not counted |"
    assert rows[2] == '| nsys | failed | 3 | no .nsys-rep was produced; live_files ["live.qdstrm"] |'
