"""Device panel: GPU memory, utilisation and power (nvidia-ml-py), or on a CPU-only machine the
process's RSS and CPU use. Sampling happens on the UI thread at a low rate (it is cheap)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvscope.inspector.human_units import human_bytes
from kvscope.inspector.live.device_stats import DeviceReading
from kvscope.tui.widgets.bars import fraction_bar, update_text

BAR_WIDTH = 20
MEM_DIGITS = ".1f"  # '450.3 MiB', '7.8 GiB'


def format_reading(r: DeviceReading) -> Text:
    text = Text()
    text.append(f"{r.name}\n", style="bold")
    mem_frac = r.mem_used_bytes / r.mem_total_bytes if r.mem_total_bytes else 0.0
    text.append("GPU mem " if r.kind == "gpu" else "RSS     ")
    text.append_text(fraction_bar(mem_frac, BAR_WIDTH, "#a97fd6"))
    text.append(f" {human_bytes(r.mem_used_bytes, MEM_DIGITS)} / {human_bytes(r.mem_total_bytes, MEM_DIGITS)}\n")
    if r.kind == "gpu":
        util = r.util_percent or 0.0
        text.append("util    ")
        text.append_text(fraction_bar(util / 100.0, BAR_WIDTH, "#5fbf5f"))
        text.append(f" {util:.0f}%\n")
        if r.power_watts is not None:
            limit = r.power_limit_watts or 0.0
            text.append("power   ")
            text.append_text(fraction_bar(r.power_watts / limit if limit else 0.0, BAR_WIDTH, "#f0c24e"))
            text.append(f" {r.power_watts:.0f} W" + (f" / {limit:.0f} W" if limit else ""))
    else:
        cpu = r.util_percent or 0.0
        cores = r.cpu_count or 1
        text.append("CPU     ")
        text.append_text(fraction_bar(cpu / (100.0 * cores), BAR_WIDTH, "#5fbf5f"))
        text.append(f" {cpu:.0f}% (100% = one core)")
    return text


class DevicePanel(Static):
    def __init__(self, *, frozen: bool = False, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.frozen = frozen
        if frozen:
            self.update(Text("device readings hidden in deterministic mode", style="dim"))

    def show(self, reading: DeviceReading) -> None:
        if not self.frozen:
            update_text(self, format_reading(reading))
