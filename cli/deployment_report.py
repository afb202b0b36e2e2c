"""What `kvscope run --headless`, `trace` and `bench` report for a disaggregated deployment: the client's
view (the ordinary Metrics over the proxy's bus: TTFT with the transfer in it, ITL, throughput), the KV
transfers (kvscope.inspector.pd_metrics) and each engine's own summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvscope.cli.summary_table import label_value_table, summary_rows, summary_table
from kvscope.inspector.human_units import human_bytes, percent
from kvscope.inspector.metrics import Metrics, Percentiles, RunSummary
from kvscope.inspector.pd_metrics import TransferStats, TransferSummary, with_pool_of

if TYPE_CHECKING:
    from kvscope.engine.session import RunSession


@dataclass(slots=True)
class DeploymentWatch:
    """The client's metrics (on the session's bus), the transfers' and each engine's (on the engines' buses)."""

    client: Metrics
    transfers: TransferStats = field(default_factory=TransferStats)
    engines: dict[str, Metrics] = field(default_factory=dict)

    @classmethod
    def attach(cls, session: RunSession, client: Metrics | None = None) -> DeploymentWatch:
        """Subscribe to the session's buses; `client`: a Metrics already on the session's bus."""
        watch = cls(client or session.bus.subscribe(Metrics()))
        for name, bus in session.buses.items():
            bus.subscribe(watch.transfers)
            watch.engines[name] = bus.subscribe(Metrics())
        return watch

    def run_summary(self) -> RunSummary:
        """The client's summary with the busiest decode engine's pool figures (what bench compares)."""
        return with_pool_of(self.client.summary(), {name: m.summary() for name, m in self.engines.items()})

    def to_dict(self) -> dict[str, Any]:
        client = self.client.summary()
        transfers = self.transfers.summary()
        return {"client": client.to_dict(),
                "kv_transfers": transfers.to_dict() | {"share_of_ttft": transfers.share_of(client.ttft_ms)},
                "engines": {name: m.summary().to_dict() for name, m in self.engines.items()}}


def transfer_rows(t: TransferSummary, ttft: Percentiles) -> list[tuple[str, str]]:
    def lat(p: Percentiles) -> str:
        return f"p50 {p.p50:9.2f}  p99 {p.p99:9.2f}  mean {p.mean:9.2f} ms  (n={p.count})"

    return [
        ("KV transfers", f"{t.transfers} over {', '.join(t.transports) or '-'}: {human_bytes(t.bytes)}, "
                         f"{human_bytes(t.bytes_per_transfer)} per request, {human_bytes(t.bytes_per_s)}/s"
                         + (f", {t.failed} failed" if t.failed else "")),
        ("transfer time", lat(t.transfer_ms)),
        ("  share of TTFT", f"{percent(t.share_of(ttft))} (mean transfer / mean TTFT); sender's read "
                            f"p50 {t.send_ms.p50:.2f} ms"),
    ]


def deployment_report(watch: DeploymentWatch) -> list[Any]:
    """Renderables: what a client sees and what the transfers cost, then each engine's summary under its name."""
    from rich.text import Text

    client = watch.client.summary()
    rows = [r for r in summary_rows(client) if r[0] in ("requests", "tokens", "duration", "throughput", "TTFT",
                                                        "ITL", "E2E")]
    parts: list[Any] = [Text("deployment: what a client sees", style="bold"),
                        label_value_table(rows + transfer_rows(watch.transfers.summary(), client.ttft_ms))]
    for name, metrics in watch.engines.items():
        parts += [Text(""), Text(name, style="bold"), summary_table(metrics.summary())]
    return parts
