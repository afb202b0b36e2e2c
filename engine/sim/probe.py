"""The step probe of a simulated device: StepProbe's phases, ranges and events, with estimated kernels.

There is no model to time, so no op timer is attached. With kernel events on, each step's kernel events
are laid out from the cost model instead: every op of every layer, in call order, back to back across the
forward phase, each as long as the cost model says (a layer op's step time split evenly over the layers),
with the same FLOPs and bytes a real run's events carry. Their backend reads "estimated".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvscope.costmodel.roofline import LAYER_OPS
from kvscope.engine.probe.kernel_events import KernelEventBuilder
from kvscope.engine.probe.step_probe import NULL_PROBE, NullProbe, StepProbe

if TYPE_CHECKING:
    from kvscope.costmodel.sim_cost import StepCostModel
    from kvscope.engine.core.request import Request
    from kvscope.engine.core.scheduler import SchedulerOutput
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.engine.probe.op_timer import RangeHook
    from kvscope.engine.sim.runner import SimBatch

ESTIMATED = "estimated"


class SimStepProbe(StepProbe):
    """StepProbe for an engine whose runner is a SimRunner (see the module docstring)."""

    __slots__ = ("sim_runner",)

    def __init__(self, engine: LLMEngine, hook: RangeHook | None, kernel_events: bool) -> None:
        assert engine.sim is not None, "SimStepProbe watches an engine on a simulated device"
        self.sim_runner = engine.sim.runner
        self.engine = engine
        self.hook = hook
        self.kernel_events = kernel_events
        self.timer = None
        self._model = None
        self.kernel_builder = KernelEventBuilder(engine.config, engine.loaded.dtype, ESTIMATED)
        self.kernel_builder.backend_of = dict.fromkeys(self.kernel_builder.backend_of, ESTIMATED)
        self.step = -1
        self.begin_ts = 0
        self.phases = []
        self._phase = ""
        self._tokens = 0
        self._start = 0

    def begin_step(self, step: int) -> StepProbe | NullProbe:
        return self if self._open_step(step) else NULL_PROBE

    def end_step(self, out: SchedulerOutput, sampled: list[Request]) -> None:
        runner = self.sim_runner
        batch = runner.last
        runner.last = None
        if self.kernel_events and batch is not None and self.engine.bus.active:
            self.engine.bus.emit_all(self.kernel_builder.events(
                self.step, estimated_records(batch, runner.cost, self.engine.config.num_layers), out.scheduled,
                len(sampled), out.num_padding_tokens, out.num_tokens))
        kernels, self.kernel_events = self.kernel_events, False  # StepProbe's own kernels come from a timer
        try:
            StepProbe.end_step(self, out, sampled)
        finally:
            self.kernel_events = kernels


def estimated_records(batch: SimBatch, cost: StepCostModel, num_layers: int) -> list[tuple[str, int, int, int]]:
    """(op, layer, start ns, end ns) for every op of the step, back to back from the forward's start."""
    times = cost.op_times(batch.query_lens, batch.seq_lens, len(batch.sampled), batch.verify_rows)
    t = float(batch.forward_start)
    records: list[tuple[str, int, int, int]] = []

    def put(op: str, layer: int, seconds: float) -> None:
        nonlocal t
        start = t
        t += seconds * 1e9
        records.append((op, layer, round(start), round(t)))

    put("embed", -1, times["embed"])
    per_layer = {op: times[op] / num_layers for op in LAYER_OPS}
    for layer in range(num_layers):
        for op in LAYER_OPS:
            put(op, layer, per_layer[op])
    put("final_norm", -1, times["final_norm"])
    put("lm_head", -1, times["lm_head"])
    return records
