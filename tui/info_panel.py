"""The panel under the block map: the legend, then the selected request's logical → physical
block table, or (when nothing is selected and the run is over) the run summary."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvscope.tui.bars import percent, update_text
from kvscope.tui.block_map import (
    _CACHED_STYLE, _FREE_STYLE, _SELECTED_STYLE, CACHED, FREE, GLYPH, SELECTED_GLYPH, SHARED, USED, owner_colour,
)

MAX_TABLE_ENTRIES = 96


def legend() -> Text:
    text = Text()
    text.append(GLYPH[USED], style=owner_colour(0))
    text.append(GLYPH[USED], style=owner_colour(1))
    text.append(" used (colour = request)  ")
    text.append(GLYPH[SHARED], style=f"bold #ffffff on {owner_colour(2)}")
    text.append(" shared, refs>1  ")
    text.append(GLYPH[CACHED], style=_CACHED_STYLE)
    text.append(" cached (free, reusable)  ")
    text.append(GLYPH[FREE], style=_FREE_STYLE)
    text.append(" free  ")
    text.append(SELECTED_GLYPH, style=_SELECTED_STYLE)
    text.append(" selected request")
    return text


def request_table_text(view, request_id: int) -> Text:
    """`request #3 · running · ...` then `L0→12 L1→13 ...`, shared blocks marked with *."""
    req = view.requests.get(request_id)
    table = view.tables.get(request_id, [])
    text = Text()
    text.append(f"request #{request_id}", style=f"bold {owner_colour(request_id)}")
    if req is None:
        text.append(" · unknown")
        return text
    text.append(f" · {req.status} · prompt {req.prompt_tokens} · out {req.output_tokens}/{req.max_tokens}"
                f" · computed {req.computed_tokens} · {len(table)} blocks")
    if req.preemptions:
        text.append(f" · preempted {req.preemptions}x", style="red")
    text.append("\n")
    if not table:
        text.append("no blocks held", style="dim")
        return text
    for logical, physical in enumerate(table[:MAX_TABLE_ENTRIES]):
        shared = 0 <= physical < len(view.block_refs) and view.block_refs[physical] > 1
        text.append(f"L{logical}→", style="dim")
        text.append(f"{physical}{'*' if shared else ''}", style="bold" if shared else "")
        text.append(" ")
    if len(table) > MAX_TABLE_ENTRIES:
        text.append(f"… (+{len(table) - MAX_TABLE_ENTRIES})", style="dim")
    return text


def summary_text(summary, frozen: bool) -> Text:
    s = summary
    text = Text("run finished  ", style="bold green")
    text.append(f"{s.finished}/{s.requests} requests · {s.prompt_tokens} prompt + {s.generated_tokens} generated"
                f" tokens in {s.steps} steps · {s.tokens_per_step_mean:.1f} tokens/step\n")
    if not frozen:
        text.append(f"{s.duration_s:.2f} s · {s.throughput_tok_s:.1f} tok/s · TTFT p50 {s.ttft_ms.p50:.1f} ms"
                    f" · ITL p50 {s.itl_ms.p50:.1f} ms · E2E p50 {s.e2e_ms.p50:.1f} ms\n")
    text.append(f"KV peak {s.peak_kv_blocks}/{s.total_kv_blocks} ({percent(s.peak_kv_usage)}) · preemptions"
                f" {s.preemptions} · prefix hits {percent(s.prefix_hit_rate)} · internal frag"
                f" {percent(s.internal_fragmentation_mean)} mean · contiguous waste"
                f" {percent(s.contiguous_waste_mean)} mean")
    return text


class InfoPanel(Static):
    def show(self, view, selected: int | None, summary=None, frozen: bool = False) -> None:
        text = legend()
        text.append("\n")
        if selected is not None:
            text.append_text(request_table_text(view, selected))
        elif summary is not None:
            text.append_text(summary_text(summary, frozen))
        else:
            text.append("click a block or a request row (enter) to see its block table", style="dim")
        update_text(self, text)
