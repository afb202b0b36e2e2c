"""The run summary that `kvscope run --headless` and `kvscope trace` print: a RunSummary
(kvscope.inspector.metrics, where every number is defined) as a label / value table.

Piped, it reads as it always did: `requests        6/6 finished`, one metric a line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvscope.inspector.human_units import percent
from kvscope.inspector.metrics import Percentiles, RunSummary

if TYPE_CHECKING:
    from rich.table import Table

LABEL_WIDTH = 14  # + two spaces of padding: values start in column 16


def summary_rows(s: RunSummary) -> list[tuple[str, str]]:
    """(label, value) per line of the summary."""

    def lat(p: Percentiles) -> str:
        return f"p50 {p.p50:9.2f}  p99 {p.p99:9.2f}  mean {p.mean:9.2f} ms  (n={p.count})"

    rows = [
        ("requests", f"{s.finished}/{s.requests} finished"),
        ("tokens", f"{s.prompt_tokens} prompt, {s.generated_tokens} generated in {s.steps} steps"),
        ("duration", f"{s.duration_s:.3f} s"),
        ("throughput", f"{s.throughput_tok_s:.1f} tok/s"),
        ("TTFT", lat(s.ttft_ms)),
        ("ITL", lat(s.itl_ms)),
        ("E2E", lat(s.e2e_ms)),
        ("tokens/step", f"{s.tokens_per_step_mean:.1f} ({s.computed_tokens} computed in all)"),
        *([("padding", f"{s.padding_tokens} tokens computed and thrown away ({percent(s.padding_share)} of the "
                       f"computed tokens)")] if s.padding_tokens else []),
        ("KV peak", f"{s.peak_kv_blocks}/{s.num_blocks} blocks ({percent(s.peak_kv_usage)})"),
        ("preemptions", f"{s.preemptions}"),
        ("prefix hits", f"{s.prefix_hit_tokens}/{s.prefix_lookup_tokens} tokens ({percent(s.prefix_hit_rate)})"),
        ("internal frag", f"{percent(s.internal_fragmentation_mean)} mean, {percent(s.internal_fragmentation)} at end"),
        ("contig. waste", f"{percent(s.contiguous_waste_mean)} mean, {percent(s.contiguous_waste)} at end"),
        *([("external frag", f"{percent(s.external_fragmentation_mean)} of free blocks outside the longest free "
                             f"run (mean); {s.refused_with_memory_free} requests made to wait with enough "
                             f"blocks free")] if s.external_fragmentation_mean or s.refused_with_memory_free
          else []),
    ]
    spec = s.spec_decode
    if spec is not None:
        cond = " ".join(f"{a:.2f}" for a in spec.conditional_acceptance)
        draft_share = spec.draft_time_s / s.duration_s if s.duration_s else 0.0
        rows += [
            ("spec decode", f"{spec.method}: {spec.num_accepted_tokens}/{spec.num_draft_tokens} drafts accepted "
                            f"({percent(spec.acceptance_rate)}) in {spec.num_drafts} verifications, "
                            f"k {spec.mean_k:.1f}"),
            ("accept length", f"{spec.mean_acceptance_length:.2f} tokens/verification (independent acceptance at "
                              f"{spec.per_token_acceptance:.2f} per token predicts "
                              f"{spec.predicted_acceptance_length:.2f})"),
            ("by position", f"{cond}  (accepted, given the earlier drafts were)"),
            ("draft time", f"{spec.draft_time_s:.3f} s ({percent(draft_share)} of the run), "
                           f"{spec.rolled_back_blocks} blocks rolled back"),
        ]
    return rows


def summary_table(s: RunSummary) -> Table:
    """The summary as a headless rich table: labels in cyan, values as they are."""
    return label_value_table(summary_rows(s))


def label_value_table(rows: list[tuple[str, str]]) -> Table:
    """(label, value) rows as a headless rich table: labels in cyan, values as they are."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_header=False, show_edge=False, pad_edge=False)
    table.add_column(min_width=LABEL_WIDTH, style="cyan", no_wrap=True)
    table.add_column(no_wrap=True)
    for label, value in rows:
        table.add_row(Text(label), Text(value))
    return table
