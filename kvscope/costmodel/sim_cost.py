"""The simulator's step time: the roofline cost model for a step's actual batch on a modelled device.

Pure python. For one scheduler step (request i brings query_lens[i] tokens and has seq_lens[i] of context)
each operator's FLOPs and bytes come from kvscope.costmodel.roofline (the model `kvscope roofline`
prints), its time from roof_time at the device's peaks (kvscope.costmodel.devices), each roof derated
by the profile's compute and memory efficiency for the op's class, plus a fixed cost per call and, for
the attention, per request (kvscope.costmodel.sim_profile).

With tensor parallelism over `tp` GPUs the projections, RoPE, the KV write, the attention and the LM head
are split evenly (FLOPs and bytes / tp; Megatron-style column/row splits) while the norms and the
embedding gather run replicated; each layer then does two all-reduces of the step's activations
(tokens x hidden x activation bytes), each a ring all-reduce: link latency + 2 (tp-1)/tp x bytes / link
bandwidth. Outside the forward pass the profile's per-step overhead is added (scheduling, batch
preparation, sampling).

Where the profile carries per-shape timings for the modelled device and dtype (SimProfile.timings_on),
a matmul op whose per-GPU weight shape (matmul_shapes) has a table takes the table's time at the step's
row count instead of its derated roofline: the step's tokens, and for the LM head the rows the engine
really runs it on, the sampled ones (the roofline's count is every request with tokens in the step).

With the IDEAL profile and tp 1 a step's time is exactly the sum of `kvscope roofline`'s per-op times
for the same batch: one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.devices import Device
from kvscope.costmodel.kv_estimate import canonical_dtype, dtype_bytes
from kvscope.costmodel.roofline import (
    LAYER_OPS,
    STEP_OPS,
    OpCost,
    attention_cost,
    layer_token_costs,
    model_token_costs,
    roof_time,
)
from kvscope.costmodel.sim_profile import IDEAL, OP_CLASS, OpTiming, SimProfile

SHARDED_OPS = frozenset({"qkv", "rope", "kv_write", "attention", "o_proj", "mlp", "lm_head"})
ALL_REDUCES_PER_LAYER = 2


def matmul_shapes(shape: ModelConfig, tp: int = 1) -> dict[str, tuple[int, int]]:
    """(in, out) of each matmul op's weights per GPU (the out side, or the in side of a row split, / tp), the
    key of per-shape timings: qkv (hidden, q + k + v), o_proj (q, hidden), the dense MLP (hidden,
    intermediate), lm_head (hidden, vocab). Nothing for MLA, whose absorbed projections are no plain matmuls."""
    if shape.is_mla:
        return {}
    h, heads, kvh, d, v = shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.v_dim
    return {"qkv": (h, (heads * d + kvh * (d + v)) // tp), "o_proj": (heads * v // tp, h),
            "mlp": (h, shape.intermediate_size // tp), "lm_head": (h, shape.vocab_size // tp)}


class StepTime(NamedTuple):
    """A simulated step: device (forward) seconds, of which all-reduce seconds, and host overhead seconds."""

    forward_s: float
    comm_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return self.forward_s + self.overhead_s


class StepCostModel:
    """Step times of `shape` on `tp` x `device` in `dtype` (weights, activations and KV) under `profile`."""

    def __init__(self, shape: ModelConfig, device: Device, *, tp: int = 1, dtype: str = "bf16",
                 profile: SimProfile = IDEAL) -> None:
        self.shape = shape
        self.device = device
        self.tp = tp
        self.profile = profile
        self.dtype = canonical_dtype(dtype)
        self.weight_bytes = dtype_bytes(self.dtype)
        self.act_bytes = 2 if self.weight_bytes < 4 else 4
        self.kv_bytes = int(max(self.weight_bytes, 1))
        self.peak = device.peak_flops(self.dtype)
        self.bandwidth = device.bandwidth
        # per op class: (fixed s per call, derated peak FLOP/s, derated bytes/s)
        self.roofs = {c: (profile.op_overhead_s[c], self.peak * profile.compute_efficiency[c],
                          self.bandwidth * profile.memory_efficiency[c]) for c in profile.op_overhead_s}
        # layers of the same kind (local window, MoE) cost the same: one representative each, and a count
        kinds: dict[tuple[bool, bool], list[int]] = {}
        for layer in range(shape.num_layers):
            kinds.setdefault((shape.is_local(layer), shape.is_moe_layer(layer)), []).append(layer)
        self.layer_kinds = [(layers[0], len(layers)) for layers in kinds.values()]
        measured = profile.timings_on(device, self.dtype)
        self.timed: dict[str, OpTiming] = {op: measured[(op, *io)] for op, io in matmul_shapes(shape, tp).items()
                                           if (op, *io) in measured}
        self._fixed: dict[tuple[int, int], dict[str, float]] = {}

    # --- per op -----------------------------------------------------------------------------------
    def op_time(self, op: str, cost: OpCost) -> float:
        """Seconds of one launch of `op` doing `cost` (per GPU under tensor parallelism)."""
        if self.tp > 1 and op in SHARDED_OPS:
            cost = OpCost(cost.flops // self.tp, cost.bytes // self.tp)
        fixed, peak, bandwidth = self.roofs[OP_CLASS[op]]
        return fixed + roof_time(cost, peak, bandwidth)

    def _token_times(self, tokens: int, rows: int) -> dict[str, float]:
        """Every op but the attention, whole step (all layers), the all-reduces ("comm") and their sum ("fixed"):
        they depend on the token count and the LM head's rows only."""
        key = (tokens, rows)
        times = self._fixed.get(key)
        if times is None:
            if len(self._fixed) >= 8192:
                self._fixed.clear()
            times = dict.fromkeys(LAYER_OPS, 0.0)
            for layer, count in self.layer_kinds:
                costs = layer_token_costs(self.shape, tokens, weight_bytes=self.weight_bytes,
                                          act_bytes=self.act_bytes, kv_bytes=self.kv_bytes, layer=layer)
                for op, cost in costs.items():
                    timing = self.timed.get(op)
                    if timing is not None and not (op == "mlp" and self.shape.is_moe_layer(layer)):
                        times[op] += count * timing.seconds(tokens)
                    else:
                        times[op] += count * self.op_time(op, cost)
            outer = model_token_costs(self.shape, tokens, rows, weight_bytes=self.weight_bytes,
                                      act_bytes=self.act_bytes)
            times.update({op: self.op_time(op, cost) for op, cost in outer.items()})
            if "lm_head" in self.timed:
                times["lm_head"] = self.timed["lm_head"].seconds(rows)
            times["comm"] = self.shape.num_layers * ALL_REDUCES_PER_LAYER * self.all_reduce_time(tokens)
            times["fixed"] = sum(times[op] for op in STEP_OPS if op != "attention") + times["comm"]
            self._fixed[key] = times
        return times

    def all_reduce_time(self, tokens: int) -> float:
        """One ring all-reduce of `tokens` hidden vectors over the tp GPUs (0 without tensor parallelism)."""
        if self.tp <= 1:
            return 0.0
        nbytes = tokens * self.shape.hidden_size * self.act_bytes
        return (self.device.link_latency_us * 1e-6
                + 2 * (self.tp - 1) / self.tp * nbytes / self.device.link_bandwidth)

    def attention_time(self, query_lens: Sequence[int], seq_lens: Sequence[int]) -> float:
        """The attention op over every layer for the step's requests."""
        total = 0.0
        for layer, count in self.layer_kinds:
            cost = attention_cost(self.shape, query_lens, seq_lens, act_bytes=self.act_bytes,
                                  kv_bytes=self.kv_bytes, layer=layer)
            total += count * self.op_time("attention", cost)
        per_seq = self.profile.attention_per_seq_s
        if per_seq:
            total += self.shape.num_layers * per_seq * sum(1 for q in query_lens if q > 0)
        return total

    def lm_head_rows(self, query_lens: Sequence[int], num_sampled: int | None, verify_rows: int = 0) -> int:
        """The LM head's rows: the sampled ones where it is timed by shape (as the engine runs it), else the
        roofline's one per request with tokens in the step; plus `verify_rows`, the draft tokens verified in the
        step (a request verifying k drafts takes 1 + k rows)."""
        if num_sampled is not None and "lm_head" in self.timed:
            return num_sampled + verify_rows
        return sum(1 for q in query_lens if q > 0) + verify_rows

    def op_times(self, query_lens: Sequence[int], seq_lens: Sequence[int],
                 num_sampled: int | None = None, verify_rows: int = 0) -> dict[str, float]:
        """Seconds per op of STEP_OPS for the whole step (layer ops summed over the layers)."""
        fixed = self._token_times(sum(query_lens), self.lm_head_rows(query_lens, num_sampled, verify_rows))
        times = {op: fixed[op] for op in STEP_OPS}
        times["attention"] = self.attention_time(query_lens, seq_lens)
        return times

    # --- per step ---------------------------------------------------------------------------------
    def overhead_time(self, num_seqs: int, tokens: int, num_sampled: int) -> float:
        p = self.profile
        return p.step_overhead_s + p.per_seq_s * num_seqs + p.per_token_s * tokens + p.per_sample_s * num_sampled

    def step_time(self, query_lens: Sequence[int], seq_lens: Sequence[int], num_sampled: int,
                  verify_rows: int = 0) -> StepTime:
        """The step's forward time (ops + all-reduces) and host overhead, in seconds (verify_rows: lm_head_rows)."""
        tokens = sum(query_lens)
        fixed = self._token_times(tokens, self.lm_head_rows(query_lens, num_sampled, verify_rows))
        forward = fixed["fixed"] + self.attention_time(query_lens, seq_lens)
        return StepTime(forward, fixed["comm"], self.overhead_time(len(query_lens), tokens, num_sampled))
