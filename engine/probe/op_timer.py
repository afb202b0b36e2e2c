"""Per-operator timing attached to a model from outside it, for kernel events and live ranges.

`OpTimer.attach(model, runner)` replaces, on those instances only, the callables a forward pass is
made of (the embedding; each layer's norms, QKV projection, KV write, attention, output projection
and MLP; the shared RoPE; the final norm, the LM head and the runner's sampler) by thin wrappers.
A wrapper pushes a live range (RangeHook, e.g. NVTX) and takes a timestamp before the call, and
after it records (op, layer, start, end) and pops the range; `detach()` puts the originals back.
The layer of an op is the decoder layer running when it is called (-1 outside the layers), so
modules shared by every layer (RoPE) are timed per layer too. The model's code never sees a timer.

On CPU the times are host ns, on the engine's clock (EventBus.clock: the monotonic one unless the caller
chose another, e.g. CPU time for calibration). On CUDA each op records a pair of CUDA events; they are resolved
after the step (when the sampler has synchronised anyway), so the forward pass never waits, and
placed on the host clock relative to an anchor event recorded when the step began.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast

import torch

from kvscope.events.vocabulary import RangeCategory

# (op, layer, start, end): ns on the host clock, or on CUDA the pair of CUDA events until resolve()
TimedOp = tuple[str, int, Any, Any]
# (op, layer, start ns, end ns, backend): an op measured inside a CPU decode program, with the backend that ran it
ProgramOp = tuple[str, int, int, int, str]
OpRecord = TimedOp | ProgramOp
GRAPH_OP = "cuda_graph"  # the op of a replayed decode graph or program (kvscope.engine.worker.cuda_graphs)
PROGRAM_BACKEND = "cpu decode program"  # the backend of ops measured inside one (kvscope.engine.worker.decode_program)


class RangeHook(Protocol):
    """Live ranges (e.g. NVTX): push when work starts, pop when it ends."""

    def push(self, name: str, category: str, payload: int = 0) -> None: ...

    def pop(self) -> None: ...


def _op_sites(model: Any, runner: Any | None) -> Iterator[tuple[Any, str, str]]:
    """(object, attribute, op name) for every callable timed as a kernel, in call order per layer."""
    yield model.embed, "forward", "embed"
    yield model.rope, "forward", "rope"
    for layer in model.layers:
        yield layer.attn_norm, "forward", "attn_norm"
        yield layer.qkv, "forward", "qkv"
        yield layer.attn, "write_kv", "kv_write"
        yield layer.attn, "forward", "attention"
        yield layer.o_proj, "forward", "o_proj"
        yield layer.mlp_norm, "forward", "mlp_norm"
        yield layer.mlp, "forward", "mlp"
    yield model.final_norm, "forward", "final_norm"
    yield model, "compute_logits", "lm_head"
    graphs = getattr(runner, "graphs", None)
    if graphs is not None:  # a replayed decode graph: the ops above do not run, this does (one launch)
        yield graphs, "replay", GRAPH_OP
    if runner is not None:
        yield runner, "sample_rows", "sample"


class OpTimer:
    """Collects (op, layer, start, end) for one step from wrappers installed by attach()."""

    __slots__ = ("_anchor_event", "_anchor_ns", "_installed", "clock", "cuda", "hook", "layer", "records")

    def __init__(self, device: torch.device, hook: RangeHook | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.clock = clock
        self.cuda = device.type == "cuda"
        self.hook = hook
        self.records: list[OpRecord] = []
        self.layer = -1
        self._installed: list[tuple[Any, str, Callable[..., Any]]] = []
        self._anchor_event: Any = None
        self._anchor_ns = 0

    # --- installing -------------------------------------------------------------------
    def attached_to(self, model: Any) -> bool:
        """Whether this timer's wrappers are the ones on `model` now (engines may share a model)."""
        return bool(self._installed) and model.embed.__dict__.get("forward") is self._installed[0][2]

    def attach(self, model: Any, runner: Any | None = None) -> None:
        """Wrap the model's (and the runner's sampler) ops, replacing any timer's wrappers on them."""
        strip_op_timers(model, runner)
        self._installed = []
        for obj, attr, op in _op_sites(model, runner):
            fn = getattr(obj, attr)
            measured = op == GRAPH_OP and getattr(obj, "measures_ops", False)
            self._install(obj, attr, self._measured(fn, obj) if measured else self._timed(fn, op))
        for index, layer in enumerate(model.layers):
            self._install(layer, "forward", self._in_layer(layer.forward, index))

    def detach(self) -> None:
        """Put the original callables back (where no other timer replaced ours meanwhile)."""
        for obj, attr, wrapper in self._installed:
            if obj.__dict__.get(attr) is wrapper:
                del obj.__dict__[attr]
        self._installed = []

    def _install(self, obj: Any, attr: str, wrapper: Callable[..., Any]) -> None:
        obj.__dict__[attr] = wrapper  # an instance attribute: shadows the class's method for this object only
        self._installed.append((obj, attr, wrapper))

    def _in_layer(self, fn: Callable[..., Any], index: int) -> Callable[..., Any]:
        timer = self

        def in_layer(*args: Any) -> Any:
            timer.layer = index
            out = fn(*args)
            timer.layer = -1
            return out

        return in_layer

    def _timed(self, fn: Callable[..., Any], op: str) -> Callable[..., Any]:
        timer, hook, clock, record = self, self.hook, self.clock, self.records.append
        if self.cuda:
            event = torch.cuda.Event

            def timed(*args: Any) -> Any:
                if hook is not None:
                    hook.push(op, RangeCategory.KERNEL)
                start = event(enable_timing=True)
                start.record()
                out = fn(*args)
                end = event(enable_timing=True)
                end.record()
                record((op, timer.layer, start, end))
                if hook is not None:
                    hook.pop()
                return out
        elif hook is None:
            def timed(*args: Any) -> Any:
                start = clock()
                out = fn(*args)
                record((op, timer.layer, start, clock()))
                return out
        else:
            push, pop = hook.push, hook.pop

            def timed(*args: Any) -> Any:
                push(op, RangeCategory.KERNEL)
                start = clock()
                out = fn(*args)
                record((op, timer.layer, start, clock()))
                pop()
                return out

        return timed

    def _measured(self, fn: Callable[..., Any], owner: Any) -> Callable[..., Any]:
        """A CPU decode program (kvscope.engine.worker.decode_program): it stamps its own ops; their times, taken on
        perf_counter_ns, are mapped onto this timer's clock over the call's span (the identity, up to a few ns,
        when the clock is perf_counter_ns; a CPU-time clock gets them scaled into the call)."""
        records, hook, clock, mono = self.records, self.hook, self.clock, time.perf_counter_ns

        def measured(*args: Any) -> Any:
            if hook is not None:
                hook.push("decode_program", RangeCategory.KERNEL)
            c0, m0 = clock(), mono()
            out = fn(*args)
            m1, c1 = mono(), clock()
            scale = (c1 - c0) / max(m1 - m0, 1)
            records.extend((op, layer, c0 + int((s - m0) * scale), c0 + int((e - m0) * scale), PROGRAM_BACKEND)
                           for op, layer, s, e in owner.op_records())
            if hook is not None:
                hook.pop()
            return out

        return measured

    # --- one step ---------------------------------------------------------------------
    def start_step(self) -> None:
        self.records.clear()  # the same list: the wrappers hold its append
        if self.cuda:
            self._anchor_event = torch.cuda.Event(enable_timing=True)
            self._anchor_event.record()
            self._anchor_ns = self.clock()

    def resolve(self) -> list[OpRecord]:
        """The step's ops as (op, layer, start_ns, end_ns) on the host clock."""
        if not self.cuda:
            return list(self.records)
        if not self.records:
            return []
        # CUDA events only: a decode program, the one source of ProgramOps, runs on the CPU
        records = cast("list[TimedOp]", self.records)
        records[-1][3].synchronize()
        anchor, base = self._anchor_event, self._anchor_ns
        return [(op, layer, base + int(anchor.elapsed_time(s) * 1e6), base + int(anchor.elapsed_time(e) * 1e6))
                for op, layer, s, e in records]


def strip_op_timers(model: Any, runner: Any | None = None) -> None:
    """Take every timer's wrappers off `model` (and the runner): its ops run untimed again."""
    for obj, attr, _ in _op_sites(model, runner):
        obj.__dict__.pop(attr, None)
    for layer in model.layers:
        layer.__dict__.pop("forward", None)
