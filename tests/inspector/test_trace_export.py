"""`kvscope trace`: trace.json checked against the Chrome Trace Event rules, trace.nvtxt parsed
against the layouts it declares, events.jsonl replayed into the same metrics, and block events
alone rebuilding the engine's final block tables and free pool after a run with preemption."""

from __future__ import annotations

import json
import random

import pytest

from kvscope.cli.console import plain_text
from kvscope.cli.main import main
from kvscope.cli.summary_table import summary_table
from kvscope.events.bus import EventBus, EventList
from kvscope.events.records import KernelEvent, KVSnapshot, RequestEvent, RunInfo, StepBegin, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED, PREEMPTED
from kvscope.inspector.export.chrome_trace import build_chrome_trace
from kvscope.inspector.export.nvtxt import nvtxt_lines
from kvscope.inspector.export.recording import read_recording
from kvscope.inspector.metrics import summarize
from kvscope.inspector.state import EngineView
from support.trace_checks import (
    check_chrome_trace,
    check_float_nesting,
    check_kernels_inside_forward,
    check_nvtxt,
    check_request_lifetimes,
    device_overrun_steps,
    ns,
    rebased,
)

TINY_RECIPE = {
    "name": "trace-test",
    "model": {"source": "random", "shape": "tiny", "seed": 0},
    "cache": {"block_size": 4, "num_blocks": 20, "prefix_caching": True},
    "scheduler": {"max_num_seqs": 6, "max_num_batched_tokens": 32},
    "sampling": {"max_tokens": 10, "ignore_eos": True},
    "workload": {"synthetic": {"num_requests": 6, "prompt_len": {"min": 8, "max": 18},
                               "output_len": {"min": 6, "max": 10}, "shared_prefix": 8, "seed": 1}},
}


# --------------------------------------------------------------------------- synthetic stream
def _synthetic_stream() -> list:
    info = RunInfo(100, -1, "tiny", 1, 2, 1, 4, 8, "float32", "cpu", "torch", "continuous", 8, 4, 64, 16, 4, 64)
    ev = [info, RequestEvent(110, -1, 0, ARRIVED, 5, 0, 0, 3), RequestEvent(120, -1, 1, ARRIVED, 3, 0, 0, 2)]
    ev += [StepBegin(200, 0), RequestEvent(210, 0, 0, "scheduled", 5), RequestEvent(220, 0, 1, "scheduled", 3)]
    ev += [KernelEvent(400, 0, "embed", -1, "torch", 300, 310), KernelEvent(400, 0, "qkv", 0, "torch", 312, 340),
           KernelEvent(400, 0, "attention", 0, "torch", 341, 380), KernelEvent(460, 0, "sample", -1, "torch", 410, 450),
           RequestEvent(455, 0, 0, "first_token", 5, 1), RequestEvent(456, 0, 1, "first_token", 3, 1),
           KVSnapshot(470, 0, 8, 4, 2, 0, 6, 8, 0),
           StepEnd(480, 0, 200, 8, 16, ((0, 5), (1, 3)), (), ((0, 1), (1, 1)),
                   (("schedule", 200, 250), ("prepare", 250, 290), ("forward", 290, 400), ("sample", 400, 460)), 2)]
    ev += [StepBegin(500, 1), RequestEvent(505, 1, 1, PREEMPTED, 3, 1), KVSnapshot(560, 1, 8, 4, 1, 0, 7, 6, 2),
           KernelEvent(540, 1, "qkv", 0, "torch", 520, 530),
           StepEnd(570, 1, 500, 1, 16, (), (0,), ((0, 1),),
                   (("schedule", 500, 510), ("prepare", 510, 515), ("forward", 515, 540), ("sample", 540, 550)), 1, 1)]
    ev += [StepBegin(600, 2), RequestEvent(605, 2, 1, "resumed", 3, 1),
           RequestEvent(640, 2, 0, FINISHED, 5, 3, 7, 3, "length"),
           RequestEvent(641, 2, 1, FINISHED, 3, 2, 4, 2, "length"),
           StepEnd(650, 2, 600, 5, 16, ((1, 4),), (0,), ((0, 1), (1, 1)),
                   (("schedule", 600, 610), ("prepare", 610, 615), ("forward", 615, 630), ("sample", 630, 645)))]
    return ev


def test_synthetic_stream_makes_a_valid_trace():
    events = _synthetic_stream()
    trace = json.loads(json.dumps(build_chrome_trace(events)))
    parsed = check_chrome_trace(trace)
    assert check_kernels_inside_forward(trace) == 5
    check_request_lifetimes(trace, events)
    names = [e["name"] for e in trace["traceEvents"] if e["ph"] == "b" and e["id"] == 1]
    assert names == ["request 1", "queued", "prefill", "preempted", "prefill"]
    # each step a request took part in sends one flow to that step
    assert len(parsed["flows"]) == 2 + 1 + 2
    layer = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == "layer 0" and e["args"]["step"] == 0]
    assert len(layer) == 1 and ns(layer[0]["ts"]) == 312 - 100 and ns(layer[0]["dur"]) == 380 - 312
    counters = {e["name"] for e in trace["traceEvents"] if e["ph"] == "C"}
    assert counters == {"KV blocks", "KV waste %", "requests", "tokens per step"}


def _touching_steps(num_steps: int, seed: int) -> list:
    """Steps whose four phases touch (each starts at the ns the previous one ends) and fill the step, at
    times up to a minute into the run: where float `ts + dur` rounds past the next `ts` if left alone."""
    rng = random.Random(seed)
    info = RunInfo(0, -1, "tiny", 1, 2, 1, 4, 8, "float32", "cpu", "torch", "continuous", 8, 4, 64, 16, 4, 64)
    events: list = [info]
    t = rng.randrange(10**9)
    for step in range(num_steps):
        begin = t
        bounds = [begin]
        for _ in range(4):
            bounds.append(bounds[-1] + rng.randrange(1, 5_000_000))
        phases = tuple((name, a, b) for name, a, b in zip(("schedule", "prepare", "forward", "sample"), bounds,
                                                             bounds[1:]))
        events += [StepBegin(begin, step), StepEnd(bounds[-1], step, begin, 1, 16, phases=phases)]
        t = bounds[-1] + rng.choice((0, 0, rng.randrange(1, 1000)))  # often the next step starts at once
    return events



def test_touching_slices_nest_exactly_in_float_arithmetic():
    from kvscope.inspector.export.trace_clock import TraceClock

    events = _touching_steps(400, seed=3)
    trace = json.loads(json.dumps(build_chrome_trace(events)))
    steps_track = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["tid"] == 1]
    assert len(steps_track) == 400 * 5
    check_float_nesting(steps_track)
    check_float_nesting(rebased(steps_track))
    # every slice ends exactly where its rounded end time is, so touching siblings meet exactly
    clock = TraceClock(trace["otherData"]["t0_ns"])
    ends = {(e.step, name): end for e in events if e.kind == "step_end" for name, _, end in e.phases}
    ends.update({(e.step, f"step {e.step}"): e.ts for e in events if e.kind == "step_end"})
    for e in steps_track:
        step = e["args"]["step"] if "step" in e["args"] else int(e["name"].split()[1])
        assert e["ts"] + e["dur"] == clock.us(ends[(step, e["name"])]), e
        assert round(e["ts"] * 1000) == ns(e["ts"])  # the nanosecond comes back from the float
    # the same times written the naive way (ts and dur each rounded to three decimals on their own) stick
    # out, as they are written or once a viewer rebases them
    naive = []
    for e in events:
        if e.kind == "step_end":
            for name, a, b in ((f"step {e.step}", e.begin_ts, e.ts), *e.phases):
                naive.append({"name": name, "ts": round((a - clock.t0) / 1000, 3), "dur": round((b - a) / 1000, 3)})
    for written in (naive, rebased(naive)):
        with pytest.raises(AssertionError):
            check_float_nesting(written)


def test_trace_clock_rounds_nanoseconds_once_and_gives_them_back():
    from kvscope.inspector.export.trace_clock import TraceClock

    rng = random.Random(0)
    clock = TraceClock(rng.randrange(10**12))
    for _ in range(5000):
        t = clock.t0 + rng.randrange(10**14)  # up to a day into the run
        us = clock.us(t)
        assert round(us * 1000) == t - clock.t0  # within half a nanosecond
        assert (us * 1024).is_integer()  # an exact binary fraction: viewers' sums and differences are exact


def test_synthetic_stream_makes_a_valid_nvtxt():
    lines = nvtxt_lines(_synthetic_stream(), process_id=42, title="synthetic, test")
    assert check_nvtxt(lines) == 3 + 3 * 4 + 5 + 2 + 4  # steps, phases, kernels, requests, markers
    assert "ProcessId = 42" in lines


@pytest.mark.parametrize("bad", ['say "hi"', "two\nlines"])
def test_nvtxt_messages_stay_one_quoted_field(bad):
    ev = [RequestEvent(1, -1, 0, ARRIVED, 1), RequestEvent(5, 0, 0, FINISHED, 1, 1, 1, 1, bad)]
    assert check_nvtxt(nvtxt_lines(ev, 1)) == 1


def test_trace_validator_rejects_overlapping_slices():
    bad = {"traceEvents": [{"name": "a", "ph": "X", "pid": 1, "tid": 1, "ts": 0.0, "dur": 5.0},
                           {"name": "b", "ph": "X", "pid": 1, "tid": 1, "ts": 4.0, "dur": 5.0}]}
    with pytest.raises(AssertionError):
        check_chrome_trace(bad)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """One `kvscope trace` run of a tiny random model with a pool small enough to preempt."""
    import yaml

    tmp = tmp_path_factory.mktemp("trace")
    recipe_path = tmp / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(TINY_RECIPE))
    out = tmp / "out"
    return ["trace", str(recipe_path), "-o", str(out)], out


def test_trace_command_writes_valid_files(traced, capsys):
    argv, out = traced
    assert main(argv) == 0
    printed = capsys.readouterr().out
    trace = json.loads((out / "trace.json").read_text())
    recording = read_recording(out / "events.jsonl")
    assert recording.damage is None and recording.header["schema"] == 2
    check_chrome_trace(trace)
    assert check_kernels_inside_forward(trace) > 0
    check_request_lifetimes(trace, recording.events)
    assert check_nvtxt((out / "trace.nvtxt").read_text().splitlines()) > 0
    # the run preempted (the acceptance's "run with preemption")
    assert any(e.kind == "request" and e.what == PREEMPTED for e in recording.events)
    # replaying the recording gives exactly the summary the command printed
    replayed = summarize(recording.events)
    assert plain_text(summary_table(replayed)) in printed
    assert replayed.finished == replayed.requests == 6


def test_block_events_rebuild_engine_state_after_preemption():
    from kvscope.config.recipe import Recipe
    from kvscope.engine.session import RunSession

    bus = EventBus()
    events = bus.subscribe(EventList())
    view = bus.subscribe(EngineView())
    recipe = dict(TINY_RECIPE, workload={"synthetic": dict(TINY_RECIPE["workload"]["synthetic"], num_requests=5)})
    session = RunSession(Recipe.from_dict(recipe), bus=bus)
    checked = 0
    mid_run: list[tuple[int, dict, set]] = []
    while session.step():
        assert view.tables == session.snapshot_tables()
        assert view.free_blocks() == session.free_block_ids()
        assert view.cached_blocks() == session.cached_block_ids()
        for rid, req in session.engine.requests.items():  # progress follows the engine between transitions too
            assert view.requests[rid].output_tokens == req.num_output_tokens
            assert view.requests[rid].computed_tokens == req.num_computed_tokens
        if session.snapshot_tables():
            mid_run.append((len(events.events), session.snapshot_tables(), session.free_block_ids()))
        checked += 1
    # block events alone rebuild the tables and the free pool at a point where requests still hold blocks
    cut, tables, free = mid_run[len(mid_run) // 2]
    partial = EngineView()
    for e in events.events[:cut]:
        if e.kind in ("run_info", "block"):
            partial.apply(e)
    assert partial.tables == tables and partial.tables
    assert partial.free_blocks() == free
    blocks_only = EngineView()
    for e in events.events:
        if e.kind in ("run_info", "block"):
            blocks_only.apply(e)
    assert blocks_only.tables == session.snapshot_tables() == {}
    assert blocks_only.free_blocks() == session.free_block_ids()
    assert blocks_only.cached_blocks() == session.cached_block_ids()
    assert checked > 3 and any(e.kind == "request" and e.what == PREEMPTED for e in events.events)


# --------------------------------------------------------------------------- NVTX hook, torch.profiler merge
class FakeDomain:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.made = 0

    def get_category_id(self, name):
        return {"step": 1, "phase": 2, "kernel": 3}[name]

    def get_event_attributes(self, message=None, color=None, category=None, payload=None):
        self.made += 1
        return {"message": message, "color": color, "category": category}

    def push_range(self, attributes=None, **kwargs):
        self.calls.append(("push", attributes["message"], attributes["category"], kwargs.get("payload")))

    def pop_range(self):
        self.calls.append(("pop",))


class FakeNvtx:
    def __init__(self) -> None:
        self.domains: dict[str, FakeDomain] = {}

    def get_domain(self, name):
        return self.domains.setdefault(name, FakeDomain())


def test_nvtx_hook_uses_domain_kvscope_and_caches_attributes():
    from kvscope.engine.probe.nvtx_ranges import NvtxRanges

    fake = FakeNvtx()
    hook = NvtxRanges(fake)
    for step in range(3):
        hook.push("step", "step", step)
        hook.push("forward", "phase", 40)
        hook.push("qkv", "kernel")
        hook.pop()
        hook.pop()
        hook.pop()
    domain = fake.domains["kvscope"]
    assert domain.made == 3  # one attributes object per (name, category), reused
    assert domain.calls[:3] == [("push", "step", 1, None), ("push", "forward", 2, 40), ("push", "qkv", 3, None)]
    assert hook.depth == 0 and domain.calls.count(("pop",)) == 9


def test_nvtx_hook_is_none_without_the_package(monkeypatch):
    import builtins

    from kvscope.engine.probe import nvtx_ranges

    real_import = builtins.__import__

    def no_nvtx(name, *args, **kwargs):
        if name == "nvtx":
            raise ImportError("no nvtx here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nvtx)
    assert nvtx_ranges.nvtx_range_hook() is None


def test_torch_profiler_events_are_shifted_onto_the_engine_clock():
    from kvscope.cli.commands.trace import ANCHOR, _shift_torch_events

    raw = [
        {"name": ANCHOR, "ph": "X", "pid": 777, "tid": 5, "ts": 5_000_000.0, "dur": 1.0},
        {"name": "aten::mm", "ph": "X", "pid": 777, "tid": 5, "ts": 5_000_010.5, "dur": 3.0},
        {"name": "thread_name", "ph": "M", "pid": 777, "tid": 5, "args": {"name": "main"}},
        {"name": "Iteration", "ph": "C", "pid": 777, "ts": 5_000_000.0, "args": {"x": 1}},
        {"name": "__kvscope_anchor_ns", "ph": "_", "ts": 2_000_000},  # engine clock at the anchor
    ]
    out = _shift_torch_events(raw, t0_ns=1_000_000)  # the trace's ts 0 is 1 ms before the anchor
    mm = next(e for e in out if e["name"] == "aten::mm")
    assert mm["ts"] == pytest.approx(1000.0 + 10.5) and mm["pid"] >= 10
    assert not any(e["name"] in (ANCHOR, "Iteration") for e in out)
    assert any(e["name"] == "process_name" and "torch.profiler" in e["args"]["name"] for e in out)


def test_trace_with_torch_profiler_merges_cpu_ops(tmp_path, capsys):
    import yaml

    recipe = dict(TINY_RECIPE, workload={"synthetic": dict(TINY_RECIPE["workload"]["synthetic"], num_requests=2)})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["trace", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "o"), "--torch-profiler"]) == 0
    trace = json.loads((tmp_path / "o" / "trace.json").read_text())
    torch_ops = [e for e in trace["traceEvents"] if e.get("pid", 0) >= 10 and e["ph"] == "X"]
    assert torch_ops and any(e["name"].startswith("aten::") for e in torch_ops)
    steps = [e for e in trace["traceEvents"] if e["ph"] == "X" and e.get("cat") == "step"]
    first, last = min(e["ts"] for e in steps), max(e["ts"] + e["dur"] for e in steps)
    matmuls = ("aten::linear", "aten::mm", "aten::addmm", "aten::bmm", "kvscope::linear_cpu")
    mms = [e["ts"] for e in torch_ops if e["name"] in matmuls]
    outside = [t for t in mms if not first - 1000 <= t <= last + 1000]
    assert mms and not outside, f"steps span {first}..{last} us; torch mm at {outside[:5]}"  # ±1 ms
    ours = {"traceEvents": [e for e in trace["traceEvents"] if e.get("pid", 0) < 10], "otherData": {}}
    check_chrome_trace(ours)


def test_torch_profiler_clock_running_fast_is_rescaled_by_the_end_anchor():
    from kvscope.cli.commands.trace import ANCHOR, ANCHOR_END, _shift_torch_events

    # the profiler's clock runs 5% fast: 21 ms of its time are 20 ms of the engine's
    raw = [
        {"name": ANCHOR, "ph": "X", "pid": 1, "tid": 1, "ts": 0.0, "dur": 1.0},
        {"name": "aten::mm", "ph": "X", "pid": 1, "tid": 1, "ts": 10_500.0, "dur": 2_100.0},
        {"name": ANCHOR_END, "ph": "X", "pid": 1, "tid": 1, "ts": 21_000.0, "dur": 1.0},
        {"name": "__kvscope_anchor_ns", "ph": "_", "ts": 1_000_000, "end": 21_000_000},
    ]
    mm = next(e for e in _shift_torch_events(raw, t0_ns=0) if e["name"] == "aten::mm")
    assert mm["ts"] == pytest.approx(1_000.0 + 10_000.0) and mm["dur"] == pytest.approx(2_000.0)


def test_device_times_past_the_host_forward_phase_stay_nested_on_the_kernels_track():
    """On a GPU the host's forward phase ends when the launches are issued; the kernels finish later."""
    from dataclasses import replace

    events = _synthetic_stream()
    phases = {e.step: {n: (s, t) for n, s, t in e.phases} for e in events if e.kind == "step_end"}
    shifted = []
    for e in events:
        if e.kind == "kernel":
            # the device finishes the last forward kernel halfway through the host's sample phase and
            # runs the sampling kernel after it (the sampler's synchronisation bounds both)
            fwd_end = phases[e.step]["forward"][1]
            sample_start, sample_end = phases[e.step]["sample"]
            late = (sample_end - sample_start) // 2
            if e.op == "sample":
                e = replace(e, start=fwd_end + late, end=max(e.end, fwd_end + late + 1))
            else:
                e = replace(e, start=e.start + late, end=max(e.end, fwd_end) + late)
        shifted.append(e)
    trace = json.loads(json.dumps(build_chrome_trace(shifted)))
    check_chrome_trace(trace)  # X slices still nest on every track
    assert check_kernels_inside_forward(trace, device=True) == sum(e.kind == "kernel" for e in shifted)
    # every step with forward kernels had them outlast its host forward phase
    assert device_overrun_steps(trace) == len({e.step for e in shifted if e.kind == "kernel" and e.op != "sample"})
    with pytest.raises(AssertionError):  # the host phases alone no longer hold them
        check_kernels_inside_forward(trace)


def test_speculative_trace_has_draft_slices_counters_and_rollbacks(tmp_path, capsys):
    """A traced run with prompt lookup: the usual checks hold, each drafting step has a draft phase slice inside
    its step, acceptance counters, spec_alloc / spec_rollback instants, and the recording replays the summary's
    speculative-decoding lines."""
    import yaml

    recipe = dict(TINY_RECIPE, speculative={"method": "ngram", "num_speculative_tokens": 3})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["trace", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    trace = json.loads((out / "trace.json").read_text())
    recording = read_recording(out / "events.jsonl")
    check_chrome_trace(trace)
    assert check_kernels_inside_forward(trace) > 0
    check_request_lifetimes(trace, recording.events)
    assert check_nvtxt((out / "trace.nvtxt").read_text().splitlines()) > 0
    names = [e["name"] for e in trace["traceEvents"]]
    assert "draft" in names and "spec decode" in names
    assert {"spec_alloc", "spec_rollback"} <= set(names)
    replayed = summarize(recording.events)
    assert replayed.spec_decode is not None and replayed.spec_decode.num_drafts > 0
    assert plain_text(summary_table(replayed)) in printed
