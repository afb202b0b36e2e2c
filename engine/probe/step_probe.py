"""The step probe: a step's instruments, beside the engine instead of inside it.

One object owns what watching a step takes: the phase times (`with probe.phase(Phase.FORWARD, n):`),
the live ranges (a RangeHook such as NVTX) around the step, each phase and each op, the per-op
timer (kvscope.engine.probe.op_timer, attached to the model from outside it), and the step's events:
StepBegin, then after the step the kernel events built from the timer's records, the KV snapshot
and StepEnd. Request and block events come from the scheduler and the block manager as they act.

`StepProbe.begin_step` hands back the probe itself when something listens (a bus subscriber or a
range hook) and NULL_PROBE otherwise, whose calls do nothing: an engine nobody watches pays one
check per step and a call per phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch

from kvscope.engine.probe.kernel_events import KernelEventBuilder
from kvscope.engine.probe.op_timer import OpTimer, RangeHook, strip_op_timers
from kvscope.events.records import KVSnapshot, SpecDecode, StepBegin, StepEnd
from kvscope.events.vocabulary import Phase, RangeCategory

if TYPE_CHECKING:
    from kvscope.engine.core.request import Request
    from kvscope.engine.core.scheduler import SchedulerOutput
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.engine.worker.model_runner import ModelRunner


class NullProbe:
    """The probe of a step nobody watches."""

    __slots__ = ()

    def phase(self, name: str, tokens: int = 0) -> NullProbe:
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None

    def end_step(self, out: SchedulerOutput, sampled: list[Request]) -> None:
        return None


NULL_PROBE = NullProbe()


class StepProbe:
    """The instruments of one engine's steps (see the module docstring). Phases do not nest."""

    __slots__ = ("_model", "_phase", "_start", "_tokens", "begin_ts", "engine", "hook", "kernel_builder",
                 "kernel_events", "phases", "step", "timer")

    timer: OpTimer | None  # None, and no model, in a SimStepProbe (which overrides begin_step)
    _model: torch.nn.Module | None

    def __init__(self, engine: LLMEngine, hook: RangeHook | None, kernel_events: bool) -> None:
        # a real device (a simulated one gets a SimStepProbe): a torch device, a ModelRunner and its backend
        device, backend = engine.device, engine.backend
        assert isinstance(device, torch.device) and backend is not None, "a StepProbe watches a real device"
        self.engine = engine
        self.hook = hook
        self.kernel_events = kernel_events
        self.timer = OpTimer(device, hook, engine.bus.clock)
        self._model = cast("ModelRunner", engine.runner).model
        self.kernel_builder = KernelEventBuilder(engine.config, engine.loaded.dtype, engine.backend_name,
                                                 fused_norm_rope=backend.fused_ops is not None)
        self.step = -1
        self.begin_ts = 0
        self.phases: list[tuple[str, int, int]] = []
        self._phase = ""
        self._tokens = 0
        self._start = 0

    def begin_step(self, step: int) -> StepProbe | NullProbe:
        """Start watching `step`: this probe, or NULL_PROBE when nothing listens."""
        bus, hook, timer, model = self.engine.bus, self.hook, self.timer, self._model
        assert timer is not None and model is not None  # set in __init__ (SimStepProbe has its own begin_step)
        timed = (bus.active and self.kernel_events) or hook is not None
        if timed:
            if not timer.attached_to(model):
                timer.attach(model, self.engine.runner)
        elif "forward" in model.embed.__dict__:  # a timer is on the model still: ours, or an earlier engine's
            strip_op_timers(model, self.engine.runner)
        if not self._open_step(step):
            return NULL_PROBE
        if timed:
            timer.start_step()
        return self

    def _open_step(self, step: int) -> bool:
        """Begin recording `step` (its StepBegin, its live range); False when nothing listens."""
        bus, hook = self.engine.bus, self.hook
        if not bus.active and hook is None:
            return False
        self.step = step
        self.phases = []
        self.begin_ts = bus.clock()
        if bus.active:
            self.engine.emit(StepBegin(self.begin_ts, step))
        if hook is not None:
            hook.push("step", RangeCategory.STEP, step)
        return True

    def phase(self, name: str, tokens: int = 0) -> StepProbe:
        """`with probe.phase(name, tokens):` times the block as phase `name` (tokens: the range's payload)."""
        self._phase, self._tokens = name, tokens
        return self

    def __enter__(self) -> None:
        if self.hook is not None:
            self.hook.push(self._phase, RangeCategory.PHASE, self._tokens)
        self._start = self.engine.bus.clock()

    def __exit__(self, *exc: Any) -> None:
        self.phases.append((self._phase, self._start, self.engine.bus.clock()))
        if self._phase == Phase.DRAFT and self.timer is not None:  # a drafter's passes are the draft phase's
            self.timer.records.clear()                                # slice, not the step's ops (no timer: sim)
        if self.hook is not None:
            self.hook.pop()

    def end_step(self, out: SchedulerOutput, sampled: list[Request]) -> None:
        """Close the step's range and emit its kernel events, KV snapshot and StepEnd."""
        if self.hook is not None:
            self.hook.pop()
        bus = self.engine.bus
        if not bus.active:
            return
        step, timer = self.step, self.timer
        if self.kernel_events and timer is not None and timer.attached_to(self._model):
            bus.emit_all(self.kernel_builder.events(step, timer.resolve(), out.scheduled, len(sampled),
                                                    out.num_padding_tokens, out.num_tokens))
        bus.emit(self.kv_snapshot(step))
        prefill, decode = [], []
        for s in out.scheduled:
            if s.is_prefill_step:
                prefill.append((s.request.request_id, s.num_tokens))
            else:
                decode.append(s.request.request_id)
        scheduler = self.engine.scheduler
        if out.spec_results:
            self.emit_spec_decode(out)
            emitted = {r.request_id: r.num_emitted for r in out.spec_results}
            sampled_counts = tuple([(r.request_id, emitted.get(r.request_id, 1)) for r in sampled])
        else:
            sampled_counts = tuple([(r.request_id, 1) for r in sampled])
        bus.emit(StepEnd(bus.clock(), step, self.begin_ts, out.num_tokens, scheduler.token_budget, tuple(prefill),
                         tuple(decode), sampled_counts, tuple(self.phases),
                         len(scheduler.running), len(scheduler.waiting), scheduler.num_preempted_waiting,
                         out.num_padding_tokens))

    def emit_spec_decode(self, out: SchedulerOutput) -> None:
        """One SpecDecode event per verified request, with the step's draft and verify (forward + sample) times."""
        spans = {name: end - start for name, start, end in self.phases}
        draft_ns = spans.get(Phase.DRAFT, 0)
        verify_ns = spans.get(Phase.FORWARD, 0) + spans.get(Phase.SAMPLE, 0)
        engine, drafter = self.engine, self.engine.drafter
        assert drafter is not None  # verified drafts come from the engine's drafter
        method, ts, step = drafter.method, engine.bus.clock(), self.step
        for r in out.spec_results:
            first_rejected = r.num_accepted if r.num_accepted < r.num_draft_tokens else -1
            engine.bus.emit(SpecDecode(ts, step, r.request_id, method, r.num_draft_slots, r.num_draft_tokens,
                                       r.num_accepted, first_rejected, draft_ns, verify_ns, r.rolled_back_slots,
                                       r.rolled_back_blocks))

    def kv_snapshot(self, step: int) -> KVSnapshot:
        """The KV pool's occupancy now: used, cached and free blocks, stored tokens, empty reserved slots, and
        what a contiguous max-length reservation would leave empty for the same live requests."""
        engine = self.engine
        bm, bs, max_len = engine.block_manager, engine.block_size, engine.max_model_len
        stored = contiguous = 0
        for r in engine.scheduler.live_requests():
            computed = r.num_computed_tokens
            stored += min(computed, len(r.block_table) * bs)
            contiguous += max_len - min(computed, max_len)
        stored -= bm.num_shared_extra * bs
        used = bm.num_used_blocks
        return KVSnapshot(engine.bus.clock(), step, bm.num_blocks, bs, used, bm.num_cached_free,
                          bm.num_free_blocks - bm.num_cached_free, stored, used * bs - stored, contiguous,
                          bm.largest_free_run(), bm.refused_with_memory_free)
