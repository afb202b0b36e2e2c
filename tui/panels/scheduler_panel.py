"""Scheduler panel: queue depths, the last step's batch composition against the token budget,
and the list of requests (running, preempted, waiting, then the latest finished) with progress.

Selecting a row (enter or click) posts RequestList.Selected; the app highlights that request's
blocks in the map.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from kvscope.inspector.state import FINISHED_STATUS, PREEMPTED_STATUS, RUNNING, WAITING
from kvscope.tui.widgets.bars import bar_runs, stacked_bar
from kvscope.tui.widgets.block_map import owner_colour
from kvscope.tui.widgets.request_list import RequestList
from kvscope.tui.widgets.text_lines import TextLines

PREFILL_COLOUR = "#f08c3a"
DECODE_COLOUR = "#4e9af1"
BATCH_BAR_WIDTH = 30
PROGRESS_WIDTH = 16
MAX_FINISHED_ROWS = 64
_ORDER = {RUNNING: 0, PREEMPTED_STATUS: 1, WAITING: 2, FINISHED_STATUS: 3}
_STATUS_STYLE = {RUNNING: "bold green", PREEMPTED_STATUS: "bold red", WAITING: "yellow", FINISHED_STATUS: "dim"}
HEADER = Text.assemble(("  req   state        prompt  preempt  progress (", "dim"), ("▮", PREFILL_COLOUR),
                       (" prompt ", "dim"), ("▮", DECODE_COLOUR), (" output)", "dim"))


def batch_line(last_step) -> Text:
    """`batch [bar] prefill P · decode D / budget B` for a StepEnd (or a placeholder)."""
    if last_step is None:
        return Text("batch: no step yet", style="dim")
    prefill = sum(n for _, n in last_step.prefill)
    decode = max(last_step.num_tokens - prefill, 0)
    text = Text(f"step {last_step.step} batch ")
    text.append_text(stacked_bar([(prefill, PREFILL_COLOUR), (decode, DECODE_COLOUR)],
                                 max(last_step.max_num_batched_tokens, last_step.num_tokens), BATCH_BAR_WIDTH))
    text.append(" prefill ", style=PREFILL_COLOUR)
    text.append(str(prefill), style="bold")
    text.append(" · decode ", style=DECODE_COLOUR)
    text.append(str(decode), style="bold")
    text.append(f" / {last_step.max_num_batched_tokens}")
    return text


def format_row(req, selected: bool) -> list[tuple[str, str]]:
    """One request as (text, style) runs: id (owner colour), state, prompt length, preemptions,
    progress bar. Runs, not a Text: the list redraws every visible row each step."""
    status = "preempted" if req.status == PREEMPTED_STATUS else req.status
    if req.status == FINISHED_STATUS and req.finish_reason:
        status = f"done:{req.finish_reason}"
    total = req.prompt_tokens + max(req.max_tokens, req.output_tokens)
    prefilled = min(req.computed_tokens, req.prompt_tokens)
    return [
        ("▶ " if selected else "  ", "bold #ffd700"),
        (f"#{req.request_id:<4}", f"bold {owner_colour(req.request_id)}"),
        (f" {status:<12}", _STATUS_STYLE.get(req.status, "")),
        (f" {req.prompt_tokens:>6}  {req.preemptions or '':>7}  ", ""),
        *bar_runs([(prefilled, PREFILL_COLOUR), (req.output_tokens, DECODE_COLOUR)], total, PROGRESS_WIDTH),
        (f" {req.output_tokens}/{req.max_tokens or '?'}", ""),
    ]


class SchedulerPanel(Vertical):
    """Counts + batch bar on top, the request list below."""

    DEFAULT_CSS = """
    SchedulerPanel > TextLines { height: 1; }
    """

    def compose(self) -> ComposeResult:
        self._counts = TextLines(id="queue-counts")
        self._batch = TextLines(id="batch-bar")
        self._requests = RequestList(format_row, id="request-list")
        yield from (self._counts, self._batch, TextLines(HEADER, id="request-header"), self._requests)

    def update_from(self, view, selected: int | None) -> None:
        counts = {RUNNING: 0, PREEMPTED_STATUS: 0, WAITING: 0, FINISHED_STATUS: 0}
        for r in view.requests.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        line = Text()
        for status in (RUNNING, WAITING, PREEMPTED_STATUS):
            line.append(f"{status} ", style=_STATUS_STYLE[status])
            line.append(f"{counts[status]}   ", style="bold")
        line.append(f"finished {counts[FINISHED_STATUS]}/{len(view.requests)}", style="dim")
        self._counts.set_text(line)
        self._batch.set_text(batch_line(view.last_step))
        ordered = sorted(view.requests.values(), key=lambda r: (_ORDER.get(r.status, 9), r.request_id))
        live = [r for r in ordered if r.status != FINISHED_STATUS]
        done = [r for r in ordered if r.status == FINISHED_STATUS][-MAX_FINISHED_ROWS:]
        self._requests.set_rows(live + done, selected)
