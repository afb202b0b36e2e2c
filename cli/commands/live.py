"""The live TUI's wiring: a recipe's RunSession behind a SessionController, the engine's threads,
the device's peaks measured before the engine starts, the recording, and the app over them.

`kvscope run RECIPE` on a terminal is run_live(); tests and benchmarks build the app with live_app().
The TUI itself (kvscope.tui) imports neither the engine nor torch: everything that needs them is here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from kvscope.cli.recipe_args import recipe_header
from kvscope.cli.text_probe import attach_engine_text_probes, attach_text_probe
from kvscope.config.recipe import Recipe
from kvscope.costmodel.roofline_bound import Peaks
from kvscope.engine.model.loader import resolve_device
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.inspector.export.recording import JsonlRecorder
from kvscope.inspector.live.controller import SessionController
from kvscope.inspector.live.device_stats import DeviceSampler
from kvscope.tui.app import REFRESH_HZ, KVScopeApp
from kvscope.tui.peaks import peaks_for


def live_app(recipe: Recipe, *, subscribers: tuple[Callable[[Any], None], ...] = (), start_paused: bool = False,
             deterministic: bool = False, refresh_hz: float = REFRESH_HZ, range_hook: Any = None) -> KVScopeApp:
    """The app over a fresh RunSession of `recipe` (built in the controller's worker thread); `subscribers`
    (a recorder) see every event too. The roofline compares with this device's peaks, measured now, before
    the engine starts; a deterministic app (snapshot tests) looks at nothing of this machine and shows the
    datasheet preset."""
    gpu_name, peaks = "", None
    if recipe.sim is not None:  # a simulated device: the roofline panel shows its datasheet peaks
        peaks = simulated_peaks(recipe)
    elif not deterministic:
        gpu_name = _gpu_name()
        peaks = _measure_peaks_before_the_engine_starts(_resolved_device(recipe), recipe.dtype, gpu_name)
    def session(bus: EventBus) -> RunSession:
        run = RunSession(recipe, bus=bus, range_hook=range_hook)
        if recipe.deployment.disaggregated:  # the panel follows a decode engine: its text, under its ids
            attach_engine_text_probes(run)
        else:
            attach_text_probe(run)  # the token stream: prompt and generated text, for the panel and the recording
        return run

    controller = SessionController(session, start_paused=start_paused, subscribers=subscribers)
    return KVScopeApp(controller=controller, title=recipe.name, deterministic=deterministic, refresh_hz=refresh_hz,
                      gpu_name=gpu_name, peaks=peaks)


def run_live(recipe: Recipe, record: str | None = None, nvtx: bool = True, threads: int | None = None) -> int:
    """`kvscope run RECIPE` on a terminal. An engine error is re-raised after the UI closes."""
    from kvscope.engine.probe.nvtx_ranges import nvtx_range_hook

    device = _resolved_device(recipe)
    _set_engine_threads(device, threads)  # first: CPU peaks are measured per thread count
    writer = JsonlRecorder(record, recipe_header(recipe, device)) if record else None
    app = live_app(recipe, subscribers=(writer,) if writer else (), range_hook=nvtx_range_hook() if nvtx else None)
    try:
        app.run()
    finally:
        if writer is not None:
            assert app.controller is not None  # live_app's app runs a controller
            app.controller.stop()
            writer.close()
    if app.exit_error is not None:
        raise app.exit_error
    return 0


def _gpu_name() -> str:
    """NVML's name of the first GPU ('' without one): it picks the datasheet preset that labels the peaks."""
    sampler = DeviceSampler()
    try:
        return sampler.sample().name if sampler.kind == "gpu" else ""
    finally:
        sampler.close()


def _resolved_device(recipe: Recipe) -> str:
    return "sim" if recipe.sim is not None else resolve_device(recipe.device).type


def simulated_peaks(recipe: Recipe) -> Peaks | None:
    """The simulated GPUs' datasheet peaks, all of them together (a step's events count the whole model's
    FLOPs and bytes, which tensor parallelism spreads over the GPUs); None for a GPU name the engine will
    refuse anyway."""
    from kvscope.costmodel.devices import DeviceError, get_device

    assert recipe.sim is not None
    try:
        gpu = get_device(recipe.sim.gpu)
    except DeviceError:
        return None
    n = recipe.sim.num_gpus
    return Peaks(f"{n}x{gpu.name} (simulated, datasheet)", n * gpu.peak_flops(recipe.dtype), n * gpu.bandwidth)


def _set_engine_threads(device: str, threads: int | None) -> None:
    """On a CPU the engine's torch threads and the UI share the cores, and an OpenMP team with one thread
    descheduled waits for it: on 2 cores the TUI cost the engine ~27% of its tokens/s with torch on both
    cores, ~9% with torch on one (benchmarks/tui_overhead.py). So leave the UI a core, unless the user
    chose (--threads, or OMP_NUM_THREADS)."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() - 1))


def _measure_peaks_before_the_engine_starts(device: str, dtype: str, gpu_name: str) -> Peaks | None:
    """The roofline's measured peaks (cached per device on first use); measuring while the engine runs would
    measure the engine's contention instead, so take them now (a fraction of a second, once per device).
    None when they cannot be measured: the panel falls back to the datasheet preset."""
    from kvscope.inspector.live.peak_probe import measured_peaks

    try:
        measured = measured_peaks(device, dtype)
    except Exception:  # no peaks is no reason to refuse to start
        return None
    return peaks_for(device, dtype, gpu_name, measured)
