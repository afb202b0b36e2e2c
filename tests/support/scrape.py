"""Reading a server's `/metrics` in tests: every sample parsed by prometheus_client, and sums over labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def metrics(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed by prometheus_client: (name, sorted labels) -> value."""
    text = httpx.get(url + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry `labels`."""
    return sum(v for (n, ls), v in m.items() if n == name and all((k, labels[k]) in ls for k in labels))


def engine_idle(server) -> bool:
    """A ServerThread's engine has no request left and every block back."""
    engine = server.state.engine.engine
    return not engine.has_unfinished() and engine.block_manager.num_used_blocks == 0
