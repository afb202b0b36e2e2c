"""Latency and throughput: TTFT / ITL / E2E percentiles from the Metrics summary, and
sparklines of output tokens per second and tokens per step over the recent steps.

In deterministic mode (snapshot tests) the wall-clock readouts are replaced by a dash and the
tokens/s sparkline is left empty; tokens per step does not depend on time and stays.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from kvscope.tui.bars import update_text
from textual.widgets import Sparkline, Static

SPARK_STEPS = 60


def _lat_row(name: str, p, frozen: bool) -> Text:
    row = Text(f"{name:<5}", style="bold")
    if frozen:
        row.append(f"p50      —  p99      —  ms   n={p.count}")
    elif p.count == 0:
        row.append("p50      -  p99      -  ms   n=0", style="dim")
    else:
        row.append(f"p50 {p.p50:6.1f}  p99 {p.p99:6.1f}  ms   n={p.count}")
    return row


class LatencyPanel(Vertical):
    def __init__(self, *, frozen: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.frozen = frozen

    def compose(self) -> ComposeResult:
        yield Static("", id="latency-text")
        yield Static("", id="tps-label")
        yield Sparkline([], id="tps-spark")
        yield Static("", id="tokens-label")
        yield Sparkline([], id="tokens-spark")

    def update_from(self, metrics, history) -> None:
        s = metrics.summary()
        text = Text()
        text.append_text(_lat_row("TTFT", s.ttft_ms, self.frozen))
        text.append("\n")
        text.append_text(_lat_row("ITL", s.itl_ms, self.frozen))
        text.append("\n")
        text.append_text(_lat_row("E2E", s.e2e_ms, self.frozen))
        update_text(self.query_one("#latency-text", Static), text)
        records = history.last(SPARK_STEPS)
        tokens = [float(r.num_tokens) for r in records]
        label = Text("tokens/s  ", style="bold")
        if self.frozen:
            label.append("—")
            self.query_one("#tps-spark", Sparkline).data = []
        else:
            label.append(f"{s.throughput_tok_s:,.1f} overall", style="")
            if records:
                label.append(f" · {records[-1].tokens_per_s:,.1f} last step", style="dim")
            self.query_one("#tps-spark", Sparkline).data = [r.tokens_per_s for r in records]
        update_text(self.query_one("#tps-label", Static), label)
        t_label = Text("tokens/step ", style="bold")
        t_label.append(f"{s.tokens_per_step_mean:.1f} mean")
        if records:
            t_label.append(f" · {records[-1].num_tokens} last · {s.steps} steps", style="dim")
        update_text(self.query_one("#tokens-label", Static), t_label)
        self.query_one("#tokens-spark", Sparkline).data = tokens
