"""Device presets: datasheet peak compute (dense, no sparsity) and memory bandwidth, and memory size.

Peaks are per-dtype tensor-core rates *without* structured sparsity (datasheets
often print the 2:4-sparse figure; those are halved here). Memory sizes are the
datasheet capacity read as GiB, which is close to what the driver reports
(e.g. an H100 80GB shows 81559 MiB, an A100 80GB 81920 MiB, an H200 143771 MiB).
The "cpu" entry is a rough, labelled placeholder, with this machine's RAM size.

Each GPU also carries its interconnect for tensor-parallel all-reduces (the simulator,
kvscope.costmodel.sim_cost): link_gbps is the per-GPU bandwidth in one direction (datasheets print
the bidirectional total: NVLink 4's "900 GB/s" is 450 each way), link_latency_us the fixed cost of one
small all-reduce (an estimate, from nccl-tests' all_reduce_perf small-message latencies, ~5-10 us over
NVLink and ~15-20 us over PCIe), link_source where the bandwidth comes from.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

GIB = 1 << 30


class DeviceError(ValueError):
    """Unknown device preset or bad memory size."""


@dataclass(frozen=True, slots=True)
class Device:
    """One accelerator. peak_tflops maps a dtype name (bf16, fp16, fp8, int8, fp32) to dense TFLOP/s (TOP/s)."""

    name: str
    memory_gib: float
    hbm_gbps: float
    peak_tflops: dict[str, float] = field(default_factory=dict)
    source: str = ""
    link_gbps: float = 0.0          # GPU-to-GPU bandwidth, one direction, GB/s (0 = none: no tensor parallelism)
    link_latency_us: float = 0.0    # one small all-reduce's fixed cost
    link_source: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s for matmuls in `dtype` (fp8/int8 fall back to bf16 where the device has no such units)."""
        key = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "int4": "int8"}.get(dtype, dtype)
        tflops = self.peak_tflops.get(key) or self.peak_tflops.get("bf16") or self.peak_tflops.get("fp32", 0.0)
        return tflops * 1e12

    @property
    def bandwidth(self) -> float:
        """Memory bandwidth in bytes/s."""
        return self.hbm_gbps * 1e9

    @property
    def link_bandwidth(self) -> float:
        """GPU-to-GPU bandwidth, one direction, in bytes/s."""
        return self.link_gbps * 1e9


def _dev(name: str, memory_gib: float, hbm_gbps: float, source: str, **peaks: float) -> Device:
    return Device(name=name, memory_gib=memory_gib, hbm_gbps=hbm_gbps, peak_tflops=dict(peaks), source=source)


DEVICES: dict[str, Device] = {
    d.name.lower(): d
    for d in (
        # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 / FP8 3,958 TFLOPS with sparsity; 3.35 TB/s.
        _dev("H100-80GB", 80, 3350, "NVIDIA H100 datasheet (SXM5), nvidia.com/en-us/data-center/h100",
             bf16=989.4, fp16=989.4, fp8=1978.9, int8=1978.9, fp32=66.9),
        # Same datasheet, PCIe column: BF16 1,513 / FP8 3,026 sparse; 2.0 TB/s.
        _dev("H100-PCIe", 80, 2000, "NVIDIA H100 datasheet (PCIe), nvidia.com/en-us/data-center/h100",
             bf16=756.5, fp16=756.5, fp8=1513.0, int8=1513.0, fp32=51.2),
        # NVIDIA H200 datasheet (SXM): H100 compute, 141 GB HBM3e at 4.8 TB/s.
        _dev("H200", 141, 4800, "NVIDIA H200 datasheet (SXM), nvidia.com/en-us/data-center/h200",
             bf16=989.4, fp16=989.4, fp8=1978.9, int8=1978.9, fp32=66.9),
        # NVIDIA A100 datasheet (SXM 80GB): BF16 312 (624 sparse), INT8 624; HBM2e 2,039 GB/s.
        _dev("A100-80GB", 80, 2039, "NVIDIA A100 datasheet (SXM4 80GB), nvidia.com/en-us/data-center/a100",
             bf16=312.0, fp16=312.0, int8=624.0, fp32=19.5),
        # Same datasheet, 40GB SXM: 1,555 GB/s.
        _dev("A100-40GB", 40, 1555, "NVIDIA A100 datasheet (SXM4 40GB), nvidia.com/en-us/data-center/a100",
             bf16=312.0, fp16=312.0, int8=624.0, fp32=19.5),
        # NVIDIA L4 datasheet: BF16 242 / FP8 485 TFLOPS with sparsity; 300 GB/s; 24 GB GDDR6.
        _dev("L4", 24, 300, "NVIDIA L4 datasheet, nvidia.com/en-us/data-center/l4",
             bf16=121.0, fp16=121.0, fp8=242.5, int8=242.5, fp32=30.3),
        # NVIDIA L40S datasheet: BF16 733 / FP8 1,466 with sparsity; 864 GB/s; 48 GB GDDR6.
        _dev("L40S", 48, 864, "NVIDIA L40S datasheet, nvidia.com/en-us/data-center/l40s",
             bf16=362.05, fp16=362.05, fp8=733.0, int8=733.0, fp32=91.6),
        # NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 (BF16/FP8 with FP32 accumulate, dense);
        # 1,008 GB/s GDDR6X; 24 GB.
        _dev("RTX-4090", 24, 1008, "NVIDIA Ada Lovelace GPU architecture whitepaper, appendix table (RTX 4090)",
             bf16=165.2, fp16=165.2, fp8=330.3, int8=660.6, fp32=82.6),
        # NVIDIA DGX/HGX B200 datasheet: per GPU 2.25 PFLOPS dense BF16 (FP8 4.5); HBM3e 8 TB/s; 180 GB.
        _dev("B200", 180, 8000, "NVIDIA HGX B200 datasheet, nvidia.com/en-us/data-center/hgx",
             bf16=2250.0, fp16=2250.0, fp8=4500.0, int8=4500.0, fp32=75.0),
        # AMD Instinct MI300X datasheet: BF16 1,307.4 dense, FP8 2,614.9; 5.3 TB/s HBM3; 192 GB.
        _dev("MI300X", 192, 5300, "AMD Instinct MI300X datasheet, amd.com/en/products/accelerators/instinct/mi300",
             bf16=1307.4, fp16=1307.4, fp8=2614.9, int8=2614.9, fp32=163.4),
    )
}

# name -> (GB/s one way, all-reduce latency us, source of the bandwidth)
_LINKS: dict[str, tuple[float, float, str]] = {
    "H100-80GB": (450, 8.0, "H100 datasheet (SXM5): NVLink 900 GB/s (bidirectional)"),
    "H100-PCIe": (300, 10.0, "H100 datasheet (PCIe): NVLink bridge 600 GB/s (bidirectional)"),
    "H200": (450, 8.0, "H200 datasheet (SXM): NVLink 900 GB/s (bidirectional)"),
    "A100-80GB": (300, 10.0, "A100 datasheet (SXM4): NVLink 600 GB/s (bidirectional)"),
    "A100-40GB": (300, 10.0, "A100 datasheet (SXM4): NVLink 600 GB/s (bidirectional)"),
    "L4": (32, 20.0, "L4 datasheet: PCIe Gen4 x16 64 GB/s (bidirectional), no NVLink"),
    "L40S": (32, 20.0, "L40S datasheet: PCIe Gen4 x16 64 GB/s (bidirectional), no NVLink"),
    "RTX-4090": (32, 20.0, "PCIe Gen4 x16 64 GB/s (bidirectional), no NVLink"),
    "B200": (900, 8.0, "HGX B200 datasheet: NVLink 5 1.8 TB/s per GPU (bidirectional)"),
    "MI300X": (448, 10.0, "MI300X datasheet: 7 Infinity Fabric links, 896 GB/s peak aggregate (bidirectional)"),
}
DEVICES = {key: replace(d, link_gbps=_LINKS[d.name][0], link_latency_us=_LINKS[d.name][1],
                        link_source=_LINKS[d.name][2])
           for key, d in DEVICES.items()}

ALIASES: dict[str, str] = {
    "h100": "h100-80gb", "h100-sxm": "h100-80gb", "h100-sxm5": "h100-80gb", "h100-80g": "h100-80gb",
    "h200-141gb": "h200", "h200-sxm": "h200",
    "a100": "a100-80gb", "a100-80g": "a100-80gb", "a100-sxm": "a100-80gb", "a100-40g": "a100-40gb",
    "4090": "rtx-4090", "rtx4090": "rtx-4090", "geforce-rtx-4090": "rtx-4090",
    "l40s-48gb": "l40s", "l4-24gb": "l4", "b200-180gb": "b200", "mi300": "mi300x",
}


def cpu_device() -> Device:
    """A rough CPU placeholder (peaks of a many-core AVX-512 server socket, DDR5 bandwidth) with this machine's RAM."""
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        memory_gib = 64.0
    return _dev("cpu", round(memory_gib, 1), 100, "rough placeholder: ~2 TFLOP/s fp32, ~100 GB/s (not a datasheet)",
                bf16=2.0, fp16=2.0, fp32=2.0)


def device_names() -> list[str]:
    return [d.name for d in DEVICES.values()] + ["cpu"]


def get_device(name: str) -> Device:
    """The preset called `name` (case-insensitive, `_` reads as `-`, a few aliases), or "cpu"."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key == "cpu":
        return cpu_device()
    if key not in DEVICES:
        raise DeviceError(f"unknown GPU {name!r} (presets: {', '.join(device_names())}; or --gpu-mem GiB)")
    return DEVICES[key]


def with_memory(device: Device, memory_gib: float) -> Device:
    """The device with a different memory size (--gpu-mem)."""
    if not (memory_gib > 0 and math.isfinite(memory_gib)):
        raise DeviceError(f"--gpu-mem must be a positive, finite number of GiB, got {memory_gib!r}")
    return replace(device, name=f"{device.name} ({memory_gib:g} GiB)", memory_gib=memory_gib)
