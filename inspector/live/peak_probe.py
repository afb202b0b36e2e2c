"""Measured device peaks for the roofline: a large matmul (FLOP/s) and a large copy (bytes/s).

Datasheet peaks are labels; what a step is compared with is what this device
actually reaches, measured once (about half a second) and cached per device
and dtype in ~/.cache/kvscope/peaks.json.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE = Path(os.environ.get("KVSCOPE_CACHE", Path.home() / ".cache" / "kvscope")) / "peaks.json"


@dataclass(frozen=True, slots=True)
class MeasuredPeaks:
    device_name: str
    dtype: str
    flops: float          # FLOP/s of a square matmul in dtype
    bandwidth: float      # bytes/s of a device-to-device copy (read + write)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    # a CPU reaches what its torch threads reach: peaks are measured (and cached) per thread count
    threads = torch.get_num_threads()
    return (f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()},"
            f" {threads} thread{'s' if threads > 1 else ''}")


def _time(fn, sync, reps: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(device: str, dtype: str) -> MeasuredPeaks:
    import torch

    dev = torch.device(device)
    dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype, torch.float32)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n = 8192 if cuda else 1024
    a = torch.randn(n, n, device=dev).to(dt)
    b = torch.randn(n, n, device=dev).to(dt)
    t = _time(lambda: a @ b, sync, 10 if cuda else 4)
    flops = 2 * n ** 3 / t
    elems = (1 << 28) if cuda else (1 << 24)  # 1 GiB / 64 MiB of fp32
    src = torch.randn(elems, device=dev)
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src), sync, 10 if cuda else 4)
    bandwidth = 2 * src.numel() * src.element_size() / t
    return MeasuredPeaks(device_name(device), dtype, flops, bandwidth)


def measured_peaks(device: str, dtype: str, cache: Path = CACHE) -> MeasuredPeaks:
    """This device's peaks, measured on first use and read from the cache afterwards."""
    name = device_name(device)
    key = f"{name}|{dtype}"
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        data = {}
    if isinstance(data, dict) and isinstance(data.get(key), dict):
        try:
            return MeasuredPeaks(**data[key])
        except TypeError:
            pass
    peaks = measure(device, dtype)
    data = data if isinstance(data, dict) else {}
    data[key] = asdict(peaks)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(data, indent=1))
    except OSError:
        pass  # a read-only home still gets the numbers, just not cached
    return peaks
