"""Device peaks for the roofline panel.

Live runs compare against peaks measured on this device (kvscope.inspector.peak_probe), labelled
with the datasheet preset NVML's name matches; replays and snapshot tests, which must not measure
this machine, use the presets in kvscope.inspector.devices (the "cpu" one is a labelled placeholder).
"""

from __future__ import annotations

from kvscope.inspector.devices import DeviceError, get_device
from kvscope.tui.roofline_panel import Peaks

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


def peaks_for(device: str, dtype: str, gpu_name: str = "", measure: bool = False) -> Peaks:
    """Peak FLOP/s for `dtype` matmuls and memory bandwidth of the device a run uses."""
    if measure:
        from kvscope.inspector.peak_probe import measured_peaks

        try:
            m = measured_peaks(device, dtype)
        except Exception:  # a probe that fails must not take the TUI down; fall back to the preset
            pass
        else:
            sheet = peaks_for(device, dtype, gpu_name, measure=False)
            label = f"{m.device_name if device.startswith('cpu') else sheet.name} · peaks measured on this machine"
            return Peaks(label, m.flops, m.bandwidth)
    preset = preset_name(device, gpu_name)
    try:
        spec = get_device(preset)
    except DeviceError:  # cannot happen for the names above; keep the panel alive regardless
        spec = get_device("cpu")
    label = spec.name if preset != "h100" or "h100" in gpu_name.lower() else f"{gpu_name} (as H100)"
    if spec.name == "cpu":
        label = "cpu (rough placeholder)"
    return Peaks(label, spec.peak_flops(dtype), spec.bandwidth)
