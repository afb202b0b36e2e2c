"""Live device readings for the TUI's device panel: GPU memory / utilisation / power through
nvidia-ml-py when a driver answers, else the process's RSS and CPU use (psutil, or /proc).

Pure python (no torch); a sampler holds its own handles, nothing global.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil


@dataclass(slots=True)
class DeviceReading:
    """One sample. GPU fields are None on the CPU fallback; CPU fields are None on a GPU."""

    kind: str                      # "gpu" | "cpu"
    name: str
    mem_used_bytes: int
    mem_total_bytes: int
    util_percent: float | None = None      # GPU utilisation, or process CPU % (100 = one core)
    power_watts: float | None = None
    power_limit_watts: float | None = None
    cpu_count: int | None = None


class DeviceSampler:
    """Samples the first NVIDIA GPU if NVML works, otherwise this process.

    `sample()` never raises: an NVML call that fails mid-run drops the sampler to the CPU reading.
    """

    def __init__(self, prefer_gpu: bool = True) -> None:
        self._nvml: ModuleType | None = None  # pynvml, once NVML answered
        self._handle: Any = None  # its handle of GPU 0 (set together with _nvml)
        self._gpu_name = ""
        self._process: psutil.Process | None = None
        self._last_cpu: tuple[float, float] | None = None
        if prefer_gpu:
            self._open_nvml()
        if self._handle is None:
            self._open_process()

    @property
    def kind(self) -> str:
        return "gpu" if self._handle is not None else "cpu"

    def _open_nvml(self) -> None:
        try:
            import pynvml
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() < 1:
                return
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
        except pynvml.NVMLError:
            return
        self._nvml = pynvml
        self._handle = handle
        self._gpu_name = name.decode() if isinstance(name, bytes) else str(name)

    def _open_process(self) -> None:
        try:
            import psutil

            self._process = psutil.Process(os.getpid())
            self._process.cpu_percent(None)  # prime the counter; the first call always says 0.0
        except Exception:  # psutil missing or /proc unreadable: fall back to /proc ourselves
            self._process = None
            self._last_cpu = (time.monotonic(), _proc_cpu_seconds())

    def sample(self) -> DeviceReading:
        if self._handle is not None:
            reading = self._sample_gpu()
            if reading is not None:
                return reading
            self._handle = None
            self._open_process()
        return self._sample_cpu()

    def _sample_gpu(self) -> DeviceReading | None:
        nvml = self._nvml
        assert nvml is not None  # a handle comes with the module that opened it
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(self._handle)
            util = nvml.nvmlDeviceGetUtilizationRates(self._handle)
        except nvml.NVMLError:
            return None
        power = limit = None
        try:
            power = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            limit = nvml.nvmlDeviceGetEnforcedPowerLimit(self._handle) / 1000.0
        except nvml.NVMLError:
            pass  # some boards do not report power; memory and utilisation still do
        return DeviceReading(
            kind="gpu", name=self._gpu_name, mem_used_bytes=int(mem.used), mem_total_bytes=int(mem.total),
            util_percent=float(util.gpu), power_watts=power, power_limit_watts=limit,
        )

    def _sample_cpu(self) -> DeviceReading:
        cpus = os.cpu_count() or 1
        if self._process is not None:
            import psutil

            rss = self._process.memory_info().rss
            cpu = self._process.cpu_percent(None)
            total = psutil.virtual_memory().total
        else:
            rss = _proc_rss_bytes()
            total = _proc_mem_total_bytes()
            now, used = time.monotonic(), _proc_cpu_seconds()
            last_t, last_used = self._last_cpu or (now, used)
            cpu = 100.0 * (used - last_used) / (now - last_t) if now > last_t else 0.0
            self._last_cpu = (now, used)
        return DeviceReading(
            kind="cpu", name=f"CPU ({cpus} cores)", mem_used_bytes=int(rss), mem_total_bytes=int(total),
            util_percent=float(cpu), cpu_count=cpus,
        )

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None
            self._handle = None


def _proc_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _proc_mem_total_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _proc_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
