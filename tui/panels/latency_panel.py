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
        self._latency = TextLines(id="latency-text")
        self._tps_label = TextLines(id="tps-label")
        self._tps_spark = TextLines(id="tps-spark")
        self._tokens_label = TextLines(id="tokens-label")
        self._tokens_spark = TextLines(id="tokens-spark")
        yield from (self._latency, self._tps_label, self._tps_spark, self._tokens_label, self._tokens_spark)

    def update_from(self, metrics: Metrics, history: StepHistory) -> None:
        s = metrics.summary()
        text = Text()
        text.append_text(_lat_row("TTFT", s.ttft_ms, self.frozen))
        text.append("\n")
        text.append_text(_lat_row("ITL", s.itl_ms, self.frozen))
        text.append("\n")
        text.append_text(_lat_row("E2E", s.e2e_ms, self.frozen))
        self._latency.set_text(text)
        width = self._tokens_spark.size.width or SPARK_STEPS
        records = history.last(width)
        label = Text("tokens/s  ", style="bold")
        if self.frozen:
            label.append("—")
            self._tps_spark.set_text("")
        else:
            label.append(f"{s.throughput_tok_s:,.1f} overall", style="")
            if records:
                label.append(f" · {records[-1].tokens_per_s:,.1f} last step", style="dim")
            self._tps_spark.set_text(spark_text([r.tokens_per_s for r in records], width, TPS_COLOUR))
        self._tps_label.set_text(label)
        t_label = Text("tokens/step ", style="bold")
        t_label.append(f"{s.tokens_per_step_mean:.1f} mean")
        if records:
            t_label.append(f" · {records[-1].num_tokens} last · {s.steps} steps", style="dim")
        self._tokens_label.set_text(t_label)
        self._tokens_spark.set_text(spark_text([float(r.num_tokens) for r in records], width, TOKENS_COLOUR))
