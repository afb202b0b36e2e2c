"""Fragmentation meters: KV usage, internal fragmentation of the paged pool, and what a
contiguous max-length reservation would waste for the same live requests.

The numbers are exactly kvscope.inspector.metrics.fragmentation() of the last KV snapshot.
"""

from __future__ import annotations

from rich.text import Text

from kvscope.inspector.human_units import percent
from kvscope.inspector.metrics import Fragmentation, fragmentation
from kvscope.tui.widgets.bars import fraction_bar
from kvscope.tui.widgets.text_lines import TextLines

BAR_WIDTH = 18


class FragmentationMeters(TextLines):
    """Three bars and their numbers; `shown` keeps the Fragmentation last drawn (for tests)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("waiting for the first KV snapshot…", id=id)
        self.shown: Fragmentation | None = None

    def update_from(self, view) -> None:
        kv = view.last_kv
        if kv is None:
            return
        frag = fragmentation(kv)
        if frag == self.shown:
            return
        self.shown = frag
        text = Text()
        text.append("KV usage     ", style="bold")
        text.append_text(fraction_bar(frag.usage, BAR_WIDTH, "#4e9af1"))
        text.append(f" {percent(frag.usage):>6}", style="bold")
        text.append(f"  {frag.used_blocks}/{frag.num_blocks} blocks, {frag.cached_blocks} cached\n")
        text.append("internal     ", style="bold")
        text.append_text(fraction_bar(frag.internal, BAR_WIDTH, "#f0c24e"))
        text.append(f" {percent(frag.internal):>6}", style="bold")
        text.append(f"  {kv.reserved_empty_slots} empty slots in used blocks\n")
        text.append("contiguous   ", style="bold")
        text.append_text(fraction_bar(frag.contiguous_waste, BAR_WIDTH, "#d95f5f"))
        text.append(f" {percent(frag.contiguous_waste):>6}", style="bold")
        text.append(f"  {kv.contiguous_waste_slots} empty if max-len reserved")
        if kv.largest_free_run >= 0:  # the contiguous allocator: free memory in holes too short to use
            text.append("\nexternal     ", style="bold")
            text.append_text(fraction_bar(frag.external, BAR_WIDTH, "#b05fd9"))
            text.append(f" {percent(frag.external):>6}", style="bold")
            text.append(f"  longest free run {kv.largest_free_run}/{kv.free_blocks} blocks, "
                        f"{kv.refused_with_memory_free} refused with memory free")
        self.set_text(text)
