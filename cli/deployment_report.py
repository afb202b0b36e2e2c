"""What `kvscope run --headless`, `trace` and `bench` print for a disaggregated deployment: the client's view
(kvscope.inspector.pd_metrics: TTFT with the transfer in it, ITL, the transfers' bytes and times) and each
engine's own summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvscope.cli.summary_table import label_value_table, summary_table
from kvscope.inspector.human_units import human_bytes, percent
from kvscope.inspector.metrics import Metrics, Percentiles, RunSummary
from kvscope.inspector.pd_metrics import DeploymentMetrics, DeploymentSummary, as_run_summary

if TYPE_CHECKING:
    from kvscope.engine.session import RunSession


@dataclass(slots=True)
class DeploymentWatch:
    """The deployment's metrics and each engine's, subscribed to the engines' buses."""

    metrics: DeploymentMetrics = field(default_factory=DeploymentMetrics)
    engines: dict[str, Metrics] = field(default_factory=dict)

    @classmethod
    def attach(cls, session: RunSession) -> DeploymentWatch:
        watch = cls()
        for name, bus in session.buses.items():
            bus.subscribe(watch.metrics.subscriber(name))
            watch.engines[name] = bus.subscribe(Metrics())
        return watch

    def run_summary(self) -> RunSummary:
        """The deployment as one RunSummary (client latencies; the busiest decode engine's pool)."""
        return as_run_summary(self.metrics.summary(), {name: m.summary() for name, m in self.engines.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"deployment": self.metrics.summary().to_dict(),
                "engines": {name: m.summary().to_dict() for name, m in self.engines.items()}}


def deployment_rows(s: DeploymentSummary) -> list[tuple[str, str]]:
    def lat(p: Percentiles) -> str:
        return f"p50 {p.p50:9.2f}  p99 {p.p99:9.2f}  mean {p.mean:9.2f} ms  (n={p.count})"

    per_request = s.transfer_bytes / s.transfers if s.transfers else 0
    return [
        ("requests", f"{s.finished}/{s.requests} finished" + (f", {s.failed} failed" if s.failed else "")),
        ("throughput", f"{s.throughput_tok_s:.1f} tok/s ({s.generated_tokens} tokens in {s.duration_s:.3f} s)"),
        ("TTFT", lat(s.ttft_ms)),
        ("ITL", lat(s.itl_ms)),
        ("E2E", lat(s.e2e_ms)),
        ("KV transfers", f"{s.transfers} over {', '.join(s.transports) or '-'}, {human_bytes(s.transfer_bytes)} "
                         f"({human_bytes(per_request)} per request, {human_bytes(s.transfer_bytes_per_s)}/s)"
                         + (f", {s.failed_transfers} failed" if s.failed_transfers else "")),
        ("transfer time", lat(s.transfer_ms)),
        ("  its TTFT share", f"{percent(s.transfer_share_of_ttft)} mean (sender's read: p50 {s.send_ms.p50:.2f} ms)"),
    ]


def deployment_report(watch: DeploymentWatch) -> list[Any]:
    """Renderables: the deployment's table, then each engine's under its name."""
    from rich.text import Text

    parts: list[Any] = [Text("deployment (what a client sees)", style="bold"),
                        label_value_table(deployment_rows(watch.metrics.summary()))]
    for name, metrics in watch.engines.items():
        parts += [Text(""), Text(name, style="bold"), summary_table(metrics.summary())]
    return parts
