"""The metrics view's panels (attach on a server without kvscope's plugin), each a few lines of text drawn
from a MetricsReading (vLLM's /metrics) or the KVBlockSet (vLLM's KV events): queues and KV usage, latency
quantiles, tokens and requests, cached blocks by hash, and what this mode cannot show."""

from __future__ import annotations

from rich.text import Text

from kvscope.inspector.external.kv_events import KVBlockSet, hash_hex
from kvscope.inspector.external.vllm_metrics import RATE_WINDOW_S, MetricsReading, Quantiles
from kvscope.inspector.human_units import percent
from kvscope.tui.widgets.bars import fraction_bar, spark_text
from kvscope.tui.widgets.text_lines import TextLines

BAR_WIDTH = 20
RECENT_BLOCKS = 6
SPARK_WIDTH = 60
TPS_COLOUR = "#5fbf5f"
NOT_EXPORTED = "not exported"

CANNOT_SHOW = (
    "This server runs without kvscope's plugin, so only what vLLM's /metrics and its KV events say is here. "
    "Not shown: the block map and physical block ids; which request owns or shares a block; requests one by one "
    "(rows, text, their preemptions); the scheduler's per-step batch, prefill chunks and token budget; the batch "
    "timeline; the roofline; empty slots inside blocks; pause and step.\n"
    "Quantiles are estimated from histogram buckets (exact to a bucket's width), over everything since attach. "
    "KV events name a block by content hash once it is full: blocks still filling are not in the set, nor is "
    "history the replay buffer no longer holds.\n"
    "For all of it: KVSCOPE_VLLM=1 VLLM_PLUGINS=kvscope vllm serve ... (kvscope's vLLM plugin), then attach again."
)


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _since(since: float | None, total: float | None, fmt: str = ",.0f") -> str:
    if total is None:
        return NOT_EXPORTED
    return f"{_num(since, fmt)} since attach · {_num(total, fmt)} in all"


class QueuesPanel(TextLines):
    """Running / waiting (swapped) requests, KV usage, prefix-cache hit rate (tokens hit / looked up since
    attach, and over the server's life), preemptions."""

    def update_from(self, r: MetricsReading) -> None:
        text = Text()
        text.append("running ", style="bold green")
        text.append(f"{_num(r.running)}   ", style="bold")
        text.append("waiting ", style="yellow")
        text.append(f"{_num(r.waiting)}", style="bold")
        if r.swapped is not None:
            text.append("   swapped ", style="red")
            text.append(_num(r.swapped), style="bold")
        text.append("\nKV usage     ", style="bold")
        if r.kv_usage is None:
            text.append(NOT_EXPORTED, style="dim")
        else:
            text.append_text(fraction_bar(r.kv_usage, BAR_WIDTH, "#4e9af1"))
            text.append(f" {percent(r.kv_usage):>6}", style="bold")
            if r.num_blocks:
                text.append(f"  of {r.num_blocks} blocks × {r.block_size} tokens", style="dim")
        if r.cpu_kv_usage is not None:
            text.append("\nCPU KV       ", style="bold")
            text.append_text(fraction_bar(r.cpu_kv_usage, BAR_WIDTH, "#b05fd9"))
            text.append(f" {percent(r.cpu_kv_usage):>6}", style="bold")
        text.append("\nprefix hits  ", style="bold")
        if r.prefix_hit_rate is None and r.prefix_hit_rate_total is None:
            text.append("no prefix-cache queries yet" if "prefix_queries" not in r.missing else NOT_EXPORTED,
                        style="dim")
        else:
            rate = r.prefix_hit_rate if r.prefix_hit_rate is not None else 0.0
            text.append_text(fraction_bar(rate, BAR_WIDTH, "#f0c24e"))
            text.append(f" {percent(rate):>6}", style="bold")
            text.append(f"  {r.prefix_hits:,.0f}/{r.prefix_queries:,.0f} tokens", style="dim")
            if r.prefix_hit_rate_total is not None:
                text.append(f" · {percent(r.prefix_hit_rate_total)} in all", style="dim")
        text.append("\npreemptions  ", style="bold")
        text.append(_since(r.preemptions, r.preemptions_total))
        self.set_text(text)


def _lat_row(name: str, q: Quantiles | None, exported: bool, frozen: bool) -> Text:
    row = Text(f"{name:<6}", style="bold")
    if not exported:
        row.append(NOT_EXPORTED, style="dim")
    elif q is None:
        row.append("p50      -  p90      -  p99      -  mean      -  ms   n=0", style="dim")
    elif frozen:
        row.append(f"p50      —  p90      —  p99      —  mean      —  ms   n={q.count}")
    else:
        row.append(f"p50 {_ms(q.p50, q)}  p90 {_ms(q.p90, q)}  p99 {_ms(q.p99, q)}  mean {q.mean:6.1f}  ms   "
                   f"n={q.count}")
    return row


def _ms(value: float, q: Quantiles) -> str:
    """A quantile in 6 cells; in the first bucket, only its bound is known: `<bound`."""
    if q.first_bound > 0 and value <= q.first_bound:
        return f"<{q.first_bound:g}".rjust(6)
    return f"{value:6.1f}"


class LatencyQuantilesPanel(TextLines):
    """TTFT / ITL / E2E / queue time from vLLM's histograms, deltas since attach."""

    ROWS = (("TTFT", "ttft"), ("ITL", "itl"), ("E2E", "e2e"), ("queue", "queue"))

    def __init__(self, *, frozen: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.frozen = frozen

    def update_from(self, r: MetricsReading) -> None:
        rows = [_lat_row(label, r.latency.get(key), key not in r.missing, self.frozen) for label, key in self.ROWS]
        self.set_text(Text("\n").join(rows))


class ThroughputPanel(TextLines):
    """Tokens/s over the last few seconds (and their sparkline), tokens and finished requests."""

    def __init__(self, *, frozen: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.frozen = frozen

    def update_from(self, r: MetricsReading) -> None:
        text = Text("tokens/s     ", style="bold")
        if self.frozen:
            text.append("—")
        elif r.generation_tok_s is None:
            text.append("after the second scrape", style="dim")
        else:
            text.append(f"{r.generation_tok_s:,.1f} generated", style="bold")
            text.append(f" · {_num(r.prompt_tok_s, ',.1f')} prompt · last {RATE_WINDOW_S:g} s", style="dim")
        text.append("\n")
        text.append_text(spark_text([] if self.frozen else list(r.tok_s_history), SPARK_WIDTH, TPS_COLOUR))
        text.append("\ngenerated    ", style="bold")
        text.append(_since(r.generation_tokens, r.generation_tokens_total))
        text.append("\nprompt       ", style="bold")
        text.append(_since(r.prompt_tokens, r.prompt_tokens_total))
        text.append("\nfinished     ", style="bold")
        text.append(_since(r.finished, r.finished_total))
        if r.finished_by_reason:
            text.append("  (" + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r.finished_by_reason.items())) + ")",
                        style="dim")
        self.set_text(text)


def kv_events_text(blocks: KVBlockSet, endpoint: str | None, replay: str | None, error: str | None) -> Text:
    """The cached-block set's lines: counts per medium, the stream's sequence and gaps, the latest blocks."""
    text = Text()
    if endpoint is None:
        text.append("no KV events: attach --kv-events tcp://HOST:PORT (vLLM's --kv-events-config endpoint)\n"
                    "shows the set of cached blocks by content hash", style="dim")
        return text
    if error is not None:
        text.append(f"{endpoint}: {error}", style="bold red")
        return text
    text.append("cached blocks ", style="bold")
    text.append(f"{len(blocks.blocks):,}", style="bold")
    by_medium = blocks.by_medium()
    if by_medium:
        text.append("  (" + ", ".join(f"{m} {n:,}" for m, n in sorted(by_medium.items())) + ")", style="dim")
    text.append(f"\nstored {blocks.stored:,} · again (a copy, a reuse) {blocks.duplicates:,} · removed "
                f"{blocks.removed:,} · cleared {blocks.cleared}")
    text.append("\nbatches ", style="bold")
    if blocks.first_seq is None:
        text.append(f"none yet from {endpoint}", style="dim")
    else:
        text.append(f"{blocks.batches:,} (seq {blocks.first_seq}..{blocks.last_seq}) · replayed "
                    f"{blocks.replayed_batches:,} · lost {blocks.lost_batches:,}")
        if blocks.restarts:
            text.append(f" · publisher restarted {blocks.restarts}×", style="yellow")
    text.append("\n")
    if blocks.complete:
        text.append("history complete since vLLM's first batch", style="green")
    elif replay is None:
        text.append("no --kv-replay: gaps stay lost, blocks stored before are missing", style="yellow")
    else:
        text.append("history incomplete: the replay buffer no longer held all of it", style="yellow")
    for b in blocks.recent(RECENT_BLOCKS):
        text.append(f"\n  {hash_hex(b.block_hash)} ← {hash_hex(b.parent)}", style="")
        text.append(f"  {len(b.tokens)} tokens · {b.medium or '-'} · seq {b.seq}", style="dim")
    return text


class KVEventsPanel(TextLines):
    def update_from(self, blocks: KVBlockSet, endpoint: str | None, replay: str | None, error: str | None) -> None:
        self.set_text(kv_events_text(blocks, endpoint, replay, error))
