"""Speculative decoding at a glance: what the drafter proposed, what the target accepted, what it cost.

Reads the Metrics' SpecDecodeSummary (kvscope.inspector.spec_metrics): acceptance rate, mean acceptance
length beside the independent-acceptance prediction, a bar per draft position for its conditional
acceptance, the draft phase's share of the run, and the blocks rolled back. Hidden while nothing drafted.
"""

from __future__ import annotations

from rich.text import Text

from kvscope.inspector.human_units import percent
from kvscope.inspector.metrics import Metrics
from kvscope.inspector.spec_metrics import SpecDecodeSummary
from kvscope.tui.widgets.bars import fraction_bar
from kvscope.tui.widgets.text_lines import TextLines

ACCEPT_COLOUR = "#5fbf5f"
BAR_WIDTH = 16


def spec_text(spec: SpecDecodeSummary, duration_s: float) -> Text:
    text = Text()
    text.append(f"{spec.method}", style="bold")
    text.append(f" · k {spec.mean_k:.1f} · {spec.num_accepted_tokens}/{spec.num_draft_tokens} accepted "
                f"({percent(spec.acceptance_rate)})\n")
    text.append("tokens/verify ", style="bold")
    text.append(f"{spec.mean_acceptance_length:.2f}")
    text.append(f" · {spec.predicted_acceptance_length:.2f} if independent\n", style="dim")
    for i, a in enumerate(spec.conditional_acceptance[:4]):
        text.append(f"draft {i + 1}  ")
        text.append_text(fraction_bar(a, BAR_WIDTH, ACCEPT_COLOUR))
        text.append(f" {percent(a)}\n")
    share = spec.draft_time_s / duration_s if duration_s else 0.0
    text.append("draft time ", style="bold")
    text.append(f"{percent(share)} · {spec.rolled_back_blocks} blocks rolled back")
    return text


class SpecDecodePanel(TextLines):
    def update_from(self, metrics: Metrics) -> None:
        spec = metrics.spec.summary()
        self.display = spec is not None
        if spec is not None:
            self.set_text(spec_text(spec, metrics.duration_s()))
