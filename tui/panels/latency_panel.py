"""Latency and throughput: TTFT / ITL / E2E percentiles from the Metrics summary, and
sparklines of output tokens per second and tokens per step over the recent steps (one cell per
step, oldest on the left, as many steps as the panel is wide).

In deterministic mode (snapshot tests) the wall-clock readouts are replaced by a dash and the
tokens/s sparkline is left empty; tokens per step does not depend on time and stays.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from kvscope.inspector.metrics import Metrics
from kvscope.inspector.step_history import StepHistory
from kvscope.tui.widgets.bars import spark_text
from kvscope.tui.widgets.text_lines import TextLines

SPARK_STEPS = 60  # steps drawn before the panel has a width
TPS_COLOUR = "#5fbf5f"
TOKENS_COLOUR = "#4e9af1"


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
        yield TextLines(id="latency-text")
        yield TextLines(id="tps-label")
        yield TextLines(id="tps-spark")
        yield TextLines(id="tokens-label")
        yield TextLines(id="tokens-spark")

    def update_from(self, metrics: Metrics, history: StepHistory) -> None:
        s = metrics.summary()
        text = Text()
        text.append_text(_lat_row("TTFT", s.ttft_ms, self.frozen))
        text.append("\n")
        text.append_text(_lat_row("ITL", s.itl_ms, self.frozen))
        text.append("\n")
        text.append_text(_lat_row("E2E", s.e2e_ms, self.frozen))
        self.query_one("#latency-text", TextLines).set_text(text)
        tokens_spark = self.query_one("#tokens-spark", TextLines)
        width = tokens_spark.size.width or SPARK_STEPS
        records = history.last(width)
        label = Text("tokens/s  ", style="bold")
        tps_spark = self.query_one("#tps-spark", TextLines)
        if self.frozen:
            label.append("—")
            tps_spark.set_text("")
        else:
            label.append(f"{s.throughput_tok_s:,.1f} overall", style="")
            if records:
                label.append(f" · {records[-1].tokens_per_s:,.1f} last step", style="dim")
            tps_spark.set_text(spark_text([r.tokens_per_s for r in records], width, TPS_COLOUR))
        self.query_one("#tps-label", TextLines).set_text(label)
        t_label = Text("tokens/step ", style="bold")
        t_label.append(f"{s.tokens_per_step_mean:.1f} mean")
        if records:
            t_label.append(f" · {records[-1].num_tokens} last · {s.steps} steps", style="dim")
        self.query_one("#tokens-label", TextLines).set_text(t_label)
        tokens_spark.set_text(spark_text([float(r.num_tokens) for r in records], width, TOKENS_COLOUR))
