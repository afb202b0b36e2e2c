"""Device peaks for the roofline panel, labelled.

Live runs compare against peaks the cli measured on this device before the engine started
(kvscope.inspector.live.peak_probe), labelled with the datasheet preset NVML's name matches; replays and
snapshot tests, which must not measure this machine, use the presets in kvscope.costmodel.devices
(the "cpu" one is a labelled placeholder). Nothing here measures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvscope.costmodel.devices import DeviceError, get_device
from kvscope.costmodel.roofline_bound import Peaks

if TYPE_CHECKING:
    from kvscope.inspector.live.peak_probe import MeasuredPeaks

# NVML names ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", ...) -> preset; first match wins
_NVML_PATTERNS = (
    (("h100", "pcie"), "h100-pcie"), (("h100",), "h100"), (("h200",), "h200"), (("a100", "40gb"), "a100-40gb"),
    (("a100",), "a100"), (("l40s",), "l40s"), (("l4",), "l4"), (("4090",), "rtx-4090"), (("b200",), "b200"),
    (("mi300",), "mi300x"),
)


def preset_name(device: str, gpu_name: str = "") -> str:
    """The devices.py preset for a run on `device` ("cpu", "cuda", "cuda:0") with NVML name `gpu_name`."""
    if not device.startswith("cuda") or not gpu_name:
        return "cpu"
    lowered = gpu_name.lower()
    for needles, preset in _NVML_PATTERNS:
        if all(n in lowered for n in needles):
            return preset
    return "h100"  # unknown GPU: H100 numbers, and the label says so


def peaks_for(device: str, dtype: str, gpu_name: str = "", measured: MeasuredPeaks | None = None) -> Peaks:
    """Peak FLOP/s for `dtype` matmuls and memory bandwidth of the device a run uses: the `measured`
    ones when given, else the datasheet preset's."""
    if measured is not None:
        sheet = peaks_for(device, dtype, gpu_name)
        name = measured.device_name if device.startswith("cpu") else sheet.name
        return Peaks(f"{name} · peaks measured on this machine", measured.flops, measured.bandwidth)
    preset = preset_name(device, gpu_name)
    try:
        spec = get_device(preset)
    except DeviceError:  # cannot happen for the names above; keep the panel alive regardless
        spec = get_device("cpu")
    label = spec.name if preset != "h100" or "h100" in gpu_name.lower() else f"{gpu_name} (as H100)"
    if spec.name == "cpu":
        label = "cpu (rough placeholder)"
    return Peaks(label, spec.peak_flops(dtype), spec.bandwidth)
