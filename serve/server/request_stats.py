"""Per-request timings and counts as vLLM v1's metrics define them (vllm/v1/metrics/stats.py), kept from the
engine's request and step events until the request finishes.

queue: arrival to first scheduled; prefill: first scheduled to first token; decode: first token to last token;
inference: first scheduled to last token (a preemption's time stays inside the phase it interrupts); time per
output token: decode / (generated - 1). cached_tokens: the prompt tokens its first scheduling found in the
prefix cache (or loaded from a prefill engine). The live records also give each running request's context, so
that a step's work can be priced (ServeMetrics' estimated FLOPs and bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

NS = 1e9


@dataclass(slots=True)
class RequestTimes:
    """One live request (ns timestamps on the bus clock; 0: not yet)."""

    arrived: int
    prompt_tokens: int
    max_tokens: int
    scheduled: int = 0
    first_token: int = 0
    last_token: int = 0
    generated: int = 0
    preemptions: int = 0
    cached_tokens: int = 0
    context: int = 0  # tokens computed into its KV cache so far

    @property
    def queue_s(self) -> float:
        return max(self.scheduled - self.arrived, 0) / NS

    @property
    def prefill_s(self) -> float:
        return max(self.first_token - self.scheduled, 0) / NS if self.first_token else 0.0

    @property
    def decode_s(self) -> float:
        return max(self.last_token - self.first_token, 0) / NS if self.first_token else 0.0

    @property
    def inference_s(self) -> float:
        return max(self.last_token - self.scheduled, 0) / NS if self.last_token and self.scheduled else 0.0

    @property
    def time_per_output_token_s(self) -> float:
        return self.decode_s / (self.generated - 1) if self.generated > 1 else 0.0


class RequestStats:
    """The live requests' RequestTimes, fed by ServeMetrics' fold."""

    def __init__(self) -> None:
        self.live: dict[int, RequestTimes] = {}

    def arrived(self, request_id: int, ts: int, prompt_tokens: int, max_tokens: int) -> None:
        self.live[request_id] = RequestTimes(ts, prompt_tokens, max_tokens)

    def scheduled(self, request_id: int, ts: int, computed_tokens: int) -> None:
        """Scheduled or resumed: its KV holds `computed_tokens` (prefix-cache hits, or 0 after a recompute)."""
        r = self.live.get(request_id)
        if r is None:
            return
        if not r.scheduled:
            r.scheduled, r.cached_tokens = ts, computed_tokens
        r.context = computed_tokens

    def first_token(self, request_id: int, ts: int) -> None:
        r = self.live.get(request_id)
        if r is not None and not r.first_token:
            r.first_token = ts

    def preempted(self, request_id: int) -> None:
        r = self.live.get(request_id)
        if r is not None:
            r.preemptions += 1

    def sampled(self, request_id: int, ts: int, n: int, finished: bool = False) -> None:
        r = self.live.get(request_id)
        if r is not None:
            r.generated += n
            r.last_token = r.last_token if finished else ts

    def finished(self, request_id: int, ts: int) -> None:
        """Its last token's time is its finish (the step's end comes later): e2e >= queue + inference."""
        r = self.live.get(request_id)
        if r is not None:
            r.last_token = ts if r.generated or r.first_token else 0

    def pop(self, request_id: int) -> RequestTimes | None:
        return self.live.pop(request_id, None)

    def step_shape(self, prefill: tuple[tuple[int, int], ...], decode: tuple[int, ...], num_tokens: int
                   ) -> tuple[list[int], list[int]]:
        """(query_lens, seq_lens) of a step, as the cost model takes them, and each request's context advanced.
        A decode request computes its last sampled token (with speculation, the step's decode tokens split
        evenly: the events say how many tokens the decodes took together, not each one's)."""
        query_lens, seq_lens = [], []
        for rid, n in prefill:
            r = self.live.get(rid)
            context = (r.context if r is not None else 0) + n
            if r is not None:
                r.context = context
            query_lens.append(n)
            seq_lens.append(context)
        if decode:
            per = max((num_tokens - sum(query_lens)) // len(decode), 1)
            for rid in decode:
                r = self.live.get(rid)
                context = (r.prompt_tokens + r.generated if r is not None else per) + per - 1
                if r is not None:
                    r.context = context
                query_lens.append(per)
                seq_lens.append(context)
        return query_lens, seq_lens
