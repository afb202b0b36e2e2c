"""The selection panel under the block map: the legend, then the selected request's logical → physical
block table and its token stream (the prompt's end and the text generated so far, live or as of the
replay cursor), or (when nothing is selected and the run is over) the run summary."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvscope.inspector.human_units import percent
from kvscope.tui.widgets.bars import update_text
from kvscope.tui.widgets.block_map import (
    _CACHED_STYLE,
    _FREE_STYLE,
    _SELECTED_STYLE,
    CACHED,
    FREE,
    GLYPH,
    SELECTED_GLYPH,
    SHARED,
    USED,
    owner_colour,
)

MAX_TABLE_ENTRIES = 96
PROMPT_LINES = 2   # the prompt's last lines; the output gets what is left of the panel
DRAFTED_STYLE = "bold #5fbf5f"  # output text that was an accepted draft (speculative decoding)
_CONTROL = dict.fromkeys([*range(32), *range(127, 160)], "·") | {10: "↵", 13: None, 9: " "}


def one_line(text: str) -> str:
    """`text` on one line: newlines as ↵, tabs as spaces, other control characters as ·."""
    return text.translate(_CONTROL)


def tail(text: str, chars: int) -> str:
    """The last `chars` characters of `text` (with … before them when cut)."""
    if chars <= 1 or len(text) <= chars:
        return text if chars > 1 else ""
    return "…" + text[-(chars - 1):]


def token_stream_text(text, request_id: int, width: int, lines: int) -> Text:
    """The request's prompt (its end, dim) and output so far (bold) from a TokenStream, in `lines` lines of
    `width` columns; the newest text always shows."""
    out = Text()
    if text is None or not text.has(request_id):
        out.append("no text for this request (the run or recording carries no token text)", style="dim")
        return out
    prompt = one_line(text.prompt(request_id))
    output = one_line(text.output(request_id))
    width = max(width, 20)
    out.append("prompt ", style="bold dim")
    out.append(tail(prompt, PROMPT_LINES * width - 7), style="dim")
    out.append("\n")
    out.append("output ", style="bold green")
    shown = max(lines - PROMPT_LINES, 1) * width - 7
    if not output:
        out.append("(nothing yet)", style="dim")
        return out
    cut = tail(output, shown)
    start = len(out)
    out.append(cut, style="bold")
    offset = len(output) - len(cut)  # output[j] is drawn at cut[j - offset] (cut[0] is "…" when cut short)
    first = 1 if cut is not output else 0
    for a, b in text.drafted.get(request_id, ()):  # accepted draft tokens
        a, b = max(a - offset, first), b - offset
        if b > a:
            out.stylize(DRAFTED_STYLE, start + a, start + b)
    return out


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
                f" tokens in {s.steps} steps · {s.tokens_per_step_mean:.1f} tokens/step"
                + (f" · padding {s.padding_tokens} ({percent(s.padding_share)})" if s.padding_tokens else "") + "\n")
    if not frozen:
        text.append(f"{s.duration_s:.2f} s · {s.throughput_tok_s:.1f} tok/s · TTFT p50 {s.ttft_ms.p50:.1f} ms"
                    f" · ITL p50 {s.itl_ms.p50:.1f} ms · E2E p50 {s.e2e_ms.p50:.1f} ms\n")
    text.append(f"KV peak {s.peak_kv_blocks}/{s.num_blocks} ({percent(s.peak_kv_usage)}) · preemptions"
                f" {s.preemptions} · prefix hits {percent(s.prefix_hit_rate)} · internal frag"
                f" {percent(s.internal_fragmentation_mean)} mean · contiguous waste"
                f" {percent(s.contiguous_waste_mean)} mean"
                + (f" · external frag {percent(s.external_fragmentation_mean)} mean, {s.refused_with_memory_free}"
                   f" refused with memory free" if s.refused_with_memory_free or s.external_fragmentation_mean
                   else ""))
    return text


class InfoPanel(Static):
    def show(self, view, selected: int | None, summary=None, frozen: bool = False, text=None) -> None:
        """`text`: a TokenStream (kvscope.inspector.token_stream) for the selected request's text."""
        out = legend()
        out.append("\n")
        if selected is not None:
            out.append_text(request_table_text(view, selected))
            out.append("\n")
            width = max(self.content_region.width, 20)
            used = sum(-(-max(len(line), 1) // width) for line in out.plain.split("\n")[:-1])
            # word wrapping takes a few columns a line: aim a little short, so the newest text stays in view
            room = max(self.content_region.height - used, 2)
            out.append_text(token_stream_text(text, selected, width - 4, room))
        elif summary is not None:
            out.append_text(summary_text(summary, frozen))
        else:
            out.append("click a block, a timeline row or a request row (enter) to see its block table and text",
                       style="dim")
        update_text(self, out)
