"""`kvscope calibrate [--device cpu|cuda] -o profile.json`: measure this machine for the simulator.

Times the model's matmul ops apart over a ladder of row counts (ROW_LADDER: every count to 16, where GEMM
paths differ most, then sparser to 512), each op through all the layers in turn so that the weights
stream as in a forward pass: the profile's per-shape timings. Then runs the real engine twice on one
calibration workload (mixed prefill chunks and decodes, batches of 1 to 16, contexts up to ~600 tokens),
once with per-op timing and once without, and fits the simulator's efficiency factors and overheads to
the events (kvscope.inspector.calibration). The factors are relative
to the peaks of a device preset: "cpu" on a CPU, the GPU's datasheet preset on CUDA. Simulate this
machine with `sim: {gpu: cpu, profile: profile.json}` (or the GPU's preset name).

On a CPU the engine runs with one torch thread unless --threads says otherwise: on a shared machine an
OpenMP team waiting for a descheduled thread makes step times erratic (30x slower on this 2-core one
while another process ran), and a profile only describes the engine at its own thread count. With
--cpu-time the steps are timed by the engine thread's CPU time instead of the wall clock: what a quiet
machine would show, whatever else runs (sim_fidelity compares real runs timed the same way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvscope.cli.errors import UsageError

DEVICES = ("cpu", "cuda")
ROW_LADDER = tuple(range(1, 17)) + (20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
REPEATS = 3


def calibration_recipe(model: dict[str, Any], device: str, requests: int = 20) -> dict[str, Any]:
    """The calibration workload (a recipe dict): everything arrives at once, so both runs schedule alike."""
    return {
        "name": "calibrate", "model": model, "device": device,
        "dtype": "float32" if device == "cpu" else "float16",
        "cache": {"block_size": 16, "num_blocks": 1024},
        "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256, "max_model_len": 1024},
        "workload": {"synthetic": {"num_requests": requests, "prompt_len": {"min": 16, "max": 512},
                                   "output_len": {"min": 4, "max": 48}, "seed": 7}},
    }


def reference_device(device: str) -> str:
    """The preset whose peaks the factors are relative to: cpu, or the CUDA GPU's datasheet preset."""
    if device == "cpu":
        return "cpu"
    import torch

    from kvscope.tui.peaks import preset_name

    return preset_name("cuda", torch.cuda.get_device_name(0))


def measure_op_timings(loaded: Any, dtype: str, clock: Any, rows: tuple[int, ...] = ROW_LADDER,
                       repeats: int = REPEATS) -> tuple[Any, ...]:
    """Per-shape timings (sim_profile.OpTiming, labelled `dtype`) of the loaded model's matmul ops: the median
    of `repeats` timings by `clock` (ns) of each op at each row count, over every layer in turn, per call.
    The ops are the engine's own callables (those the op timer wraps), fed random activations."""
    import statistics

    import torch

    from kvscope.costmodel.sim_cost import matmul_shapes
    from kvscope.costmodel.sim_profile import OpTiming
    from kvscope.engine.probe.op_timer import _op_sites

    shapes = matmul_shapes(loaded.config)
    calls: dict[str, list[Any]] = {op: [] for op in shapes}
    for obj, attr, op in _op_sites(loaded.model, None):
        if op in calls:
            calls[op].append(getattr(obj, attr))
    calls = {op: fns for op, fns in calls.items() if fns}
    cuda = loaded.device.type == "cuda"
    runs: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        inputs = {(op, n): torch.randn(n, shapes[op][0], dtype=loaded.dtype, device=loaded.device)
                  for op in calls for n in rows}
        for op, fns in calls.items():
            fns[0](inputs[(op, rows[0])])  # first call: allocations, lazy initialisation
        for _ in range(repeats):  # the repeats a whole ladder apart: a burst of other work spoils one of each
            for n in rows:
                for op, fns in calls.items():
                    x = inputs[(op, n)]
                    if cuda:
                        torch.cuda.synchronize()
                    start = clock()
                    for fn in fns:
                        fn(x)
                    if cuda:
                        torch.cuda.synchronize()
                    runs.setdefault((op, n), []).append((clock() - start) / 1e9 / len(fns))
    return tuple(OpTiming(op, *shapes[op], dtype, tuple(rows), tuple(statistics.median(runs[(op, n)]) for n in rows))
                 for op in calls)


def calibrate(recipe_data: dict[str, Any], reference: str, cpu_time: bool = False) -> Any:
    """Run the recipe twice (kernel events on, then off) and fit a SimProfile to the two runs. `cpu_time`: the
    steps and their ops are timed by this thread's CPU time, not the wall clock (EventBus.clock, which the
    op timer follows)."""
    import platform
    import time

    from kvscope.config.recipe import Recipe
    from kvscope.costmodel.devices import get_device
    from kvscope.costmodel.kv_estimate import canonical_dtype
    from kvscope.engine.model.loader import load_for_recipe
    from kvscope.engine.session import RunSession
    from kvscope.events.bus import EventBus
    from kvscope.inspector.calibration import StepRecorder, fit_profile

    recipe = Recipe.from_dict(recipe_data)
    loaded = load_for_recipe(recipe)
    ref = get_device(reference)
    dtype = canonical_dtype(recipe.dtype)
    timings = measure_op_timings(loaded, dtype, time.thread_time_ns if cpu_time else time.perf_counter_ns)
    samples = []
    for kernels in (True, False):
        bus = EventBus(clock=time.thread_time_ns) if cpu_time else EventBus()
        recorder = bus.subscribe(StepRecorder())
        RunSession(recipe, bus=bus, kernel_events=kernels, loaded=loaded).run()
        samples.append(recorder.samples())
    where = (f"{platform.node() or 'this machine'} ({recipe.device}, {loaded.config.name}, {recipe.dtype}, "
             f"{torch_threads()} thread(s){', CPU time' if cpu_time else ''})")
    return fit_profile(samples[0], samples[1], ref, dtype, relative_to=reference,
                       measured_on=where, op_timings=timings, num_layers=loaded.config.num_layers)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_calibrate(out: str, *, device: str = "cpu", model: str | None = None, requests: int = 20,
                  threads: int = 1, cpu_time: bool = False) -> int:
    """`kvscope calibrate`: measure, fit, write the profile and print its factors."""
    import torch

    from kvscope.cli.recipe_args import model_override

    if device not in DEVICES:
        raise UsageError(f"--device: must be one of {', '.join(DEVICES)}, got {device!r}")
    if threads < 1:
        raise UsageError(f"--threads: must be a positive integer, got {threads}")
    if device == "cuda":
        if cpu_time:
            raise UsageError("--cpu-time: a GPU's work is not this thread's CPU time; time CUDA by the wall clock")
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available here")
    if requests < 2:
        raise UsageError(f"--requests: must be at least 2, got {requests}")
    path = Path(out)
    if not path.parent.is_dir():
        raise UsageError(f"-o {out}: folder {path.parent} does not exist")
    spec = model_override(model) if model else {"source": "gguf", "path": "smollm2"}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the profile describes the engine at this thread count
    try:
        profile = calibrate(calibration_recipe(spec, device, requests), reference_device(device), cpu_time)
    finally:
        torch.set_num_threads(before)
    try:
        path.write_text(json.dumps(profile.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"-o {out}: cannot write: {exc.strerror or exc}") from None
    print(f"measured on {profile.measured_on}, relative to the {profile.relative_to} preset's peaks")
    for what, table, fmt in (("compute efficiency", profile.compute_efficiency, "{:.3g}"),
                             ("memory efficiency", profile.memory_efficiency, "{:.3g}"),
                             ("per-op overhead", {c: v * 1e6 for c, v in profile.op_overhead_s.items()}, "{:.1f} us")):
        print(f"{what}: " + "  ".join(f"{c} {fmt.format(v)}" for c, v in table.items()))
    for t in profile.op_timings:
        print(f"{t.op} {t.in_features}x{t.out_features} {t.dtype}, us per call at 1, 2, 3, 4, 16, {t.rows[-1]} rows: "
              + " ".join(f"{s * 1e6:.0f}" for n, s in zip(t.rows, t.times) if n in (1, 2, 3, 4, 16, t.rows[-1])))
    print(f"per step: {profile.step_overhead_s * 1e3:.3f} ms + {profile.per_seq_s * 1e6:.1f} us/request + "
          f"{profile.per_token_s * 1e6:.2f} us/token + {profile.per_sample_s * 1e6:.1f} us/sampled row; "
          f"attention {profile.attention_per_seq_s * 1e6:.1f} us/request/layer")
    print(f"wrote {out}; simulate this device with  sim: {{gpu: {profile.relative_to}, profile: {out}}}")
    return 0
