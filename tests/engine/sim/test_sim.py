"""The simulated device: the engine's own scheduling (step-by-step identical to a real run), the cost model's
step time (the roofline's, and a hand count), the virtual clock, and one-line errors for bad input."""

import json

import pytest

from kvscope.cli.main import main
from kvscope.config.model_presets import get_preset
from kvscope.config.recipe import Recipe
from kvscope.costmodel.devices import get_device
from kvscope.costmodel.roofline_report import analyze_step
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.session import RunSession
from kvscope.engine.workload import build_workload
from kvscope.events.bus import EventBus, EventList
from kvscope.events.records import KernelEvent, StepEnd

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the real tiny runs: steady on a shared machine

TINY = {
    "model": {"source": "random", "shape": "tiny", "seed": 0},
    "cache": {"block_size": 4, "num_blocks": 40, "prefix_caching": True},
    "scheduler": {"max_num_seqs": 6, "max_num_batched_tokens": 48, "max_model_len": 128},
    "workload": {"synthetic": {"num_requests": 18, "prompt_len": {"min": 8, "max": 40},
                               "output_len": {"min": 4, "max": 24}, "shared_prefix": 8, "seed": 3}},
}


def _decisions(recipe: Recipe) -> list[tuple]:
    """Every step's scheduler decisions: (request, tokens, prefill?) scheduled, preempted requests, block tables
    after the step, finished requests; requests arrive three per step, the same workload each run."""
    engine = LLMEngine(recipe)
    items = build_workload(recipe, engine.config.vocab_size, set(engine.tokenizer.eos_token_ids) | {256})
    outs = []
    schedule = engine.scheduler.schedule

    def watched(step):
        out = schedule(step)
        outs.append(out)
        return out

    engine.scheduler.schedule = watched
    steps, i = [], 0
    while i < len(items) or engine.has_unfinished():
        for item in items[i:i + 3]:
            engine.add_request(item.prompt, item.params)
        i += 3
        finished = engine.step()
        out = outs[-1]
        steps.append((tuple((s.request.request_id, s.num_tokens, s.is_prefill_step) for s in out.scheduled),
                      tuple(r.request_id for r in out.preempted), out.num_padding_tokens,
                      tuple(sorted(engine.block_tables().items())),
                      tuple(sorted((o.request_id, len(o.token_ids), o.finish_reason) for o in finished))))
        assert len(steps) < 2000
    return steps


@pytest.mark.parametrize("overrides", [{}, {"scheduler": {"policy": "static"}, "cache": {"prefix_caching": False}}],
                         ids=["continuous-preempting", "static"])
def test_simulated_scheduling_is_the_engines_own(overrides):
    real = Recipe.from_dict(TINY).with_overrides(overrides)
    sim = real.with_overrides({"device": "sim", "sim": {"gpu": "H100-80GB"}})
    real_steps, sim_steps = _decisions(real), _decisions(sim)
    assert sim_steps == real_steps
    if not overrides:  # the workload really exercises preemption and the prefix cache
        assert any(preempted for _, preempted, *_ in real_steps)
        assert any(n < 40 and prefill for sched, *_ in real_steps for _, n, prefill in sched)


def _step_ends(recipe: Recipe) -> tuple[list[StepEnd], list[KernelEvent]]:
    bus = EventBus()
    events = bus.subscribe(EventList())
    RunSession(recipe, bus=bus).run()
    return ([e for e in events.events if isinstance(e, StepEnd)],
            [e for e in events.events if isinstance(e, KernelEvent)])


LLAMA8B_DECODE = {
    "device": "sim", "dtype": "bfloat16", "sim": {"gpu": "H100-80GB"},
    "model": {"source": "preset", "name": "llama-3.1-8b"},
    "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 16 * 4095, "max_model_len": 8192},
    "workload": {"synthetic": {"num_requests": 16, "prompt_len": 4095, "output_len": 2}},
}


def test_decode_step_time_is_the_rooflines(capsys):
    """Llama-3.1-8B, 16 requests decoding at 4k context on an H100: the simulated forward is exactly what
    `kvscope roofline` prints for that shape, and close to a hand count of the bytes it must read."""
    steps, kernels = _step_ends(Recipe.from_dict(LLAMA8B_DECODE))
    assert [len(s.prefill) for s in steps] == [16, 0] and len(steps[1].decode) == 16
    forward = next((end - start) / 1e9 for name, start, end in steps[1].phases if name == "forward")
    assert main(["roofline", "llama-3.1-8b", "--gpu", "H100-80GB", "--batch", "16", "--context", "4096",
                 "--phase", "decode", "--dtype", "bf16", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["step_time_s"]
    assert forward == pytest.approx(printed, abs=2e-9)  # the virtual clock counts whole nanoseconds
    # by hand: every weight but the embedding table read once, and 16 x 4096 tokens of K/V
    # (32 layers x 8 KV heads x 128 x K,V x 2 bytes), all at 3.35 TB/s; decode is memory-bound
    weights = (8_030_261_248 - 128256 * 4096) * 2
    kv = 16 * 4096 * 32 * 8 * 128 * 2 * 2
    assert forward == pytest.approx((weights + kv) / 3.35e12, rel=0.02)
    # the step's estimated kernels tile its forward phase and carry the cost model's FLOPs and bytes
    step_kernels = [k for k in kernels if k.step == 1]
    assert len(step_kernels) == 3 + 32 * 8 and {k.backend for k in step_kernels} == {"estimated"}
    report = analyze_step(get_preset("llama-3.1-8b"), get_device("H100-80GB"), batch=16, context=4096,
                          phase="decode", dtype="bf16")
    assert sum(k.bytes for k in step_kernels) == report.total_bytes
    assert sum(k.end - k.start for k in step_kernels) / 1e9 == pytest.approx(printed, rel=1e-6)


def test_tensor_parallel_step_adds_all_reduces_and_splits_the_work():
    one = _step_ends(Recipe.from_dict(LLAMA8B_DECODE))[0][1]
    tp8 = Recipe.from_dict({**LLAMA8B_DECODE, "sim": {"gpu": "H100-80GB", "num_gpus": 8, "tp": 8}})
    eight = _step_ends(tp8)[0][1]
    t1 = (one.ts - one.begin_ts) / 1e9
    t8 = (eight.ts - eight.begin_ts) / 1e9
    # 64 all-reduces of 16 x 4096 x 2 bytes over NVLink: latency-dominated (8 us each)
    assert 64 * 8e-6 < t8 - t1 / 8 < 64 * 10e-6 + 0.1 * t1 / 8


def test_virtual_clock_runs_the_workload_at_the_simulated_speed():
    """Poisson arrivals far apart: the run's duration is the arrivals', not this machine's."""
    recipe = Recipe.from_dict({**LLAMA8B_DECODE, "workload": {"synthetic": {
        "num_requests": 5, "prompt_len": 100, "output_len": 3, "arrival_rate": 0.01}}})
    bus = EventBus()
    events = bus.subscribe(EventList())
    session = RunSession(recipe, bus=bus)
    session.run()
    span = (events.events[-1].ts - events.events[0].ts) / 1e9
    assert span == pytest.approx(session.clock_s, rel=1e-6)
    assert span > 100  # five arrivals at 0.01/s: minutes of simulated time, run in well under a second
    assert session.wall_s < 5


BAD = """
device: sim
dtype: bfloat16
model: {source: preset, name: MODEL}
sim: SIM
workload: {synthetic: {num_requests: 2, prompt_len: 16, output_len: 4}}
"""


@pytest.mark.parametrize("model,sim,needles", [
    ("llama-3.1-8b", "{gpu: H900}", ("sim.gpu", "unknown GPU 'H900'")),
    ("llama-3.1-70b", "{gpu: L4}", ("model", "does not fit", "1 x L4")),
    ("llama-3.1-8b", "{gpu: H100, num_gpus: 3, tp: 3}", ("sim.tp", "does not divide the 32 attention heads")),
    ("llama-3.1-8b", "{gpu: H100, tp: 2, num_gpus: 4}", ("sim.tp", "must equal sim.num_gpus")),
    ("llama-3.1-8b", "{gpu: H100, profile: PROFILE}", ("sim.profile", "not a kvscope profile")),
    ("llama-3.1-8b", "{gpu: H100, profile: /no/such.json}", ("sim.profile", "no such profile file")),
    ("llama-9", "{gpu: H100}", ("model.name", "unknown model 'llama-9'")),
])
def test_bad_simulation_is_one_line_and_exit_2(tmp_path, capsys, model, sim, needles):
    profile = tmp_path / "profile.json"
    profile.write_text('{"efficiency": 3}')
    path = tmp_path / "r.yaml"
    path.write_text(BAD.replace("MODEL", model).replace("SIM", sim).replace("PROFILE", str(profile)))
    assert main(["run", str(path), "--headless"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvscope: error: ") and str(path) in err[0], err
    for n in needles:
        assert n in err[0], err[0]


def test_preset_model_needs_a_simulated_device():
    with pytest.raises(Exception, match="model.source: a preset has no weights"):
        Recipe.from_dict({"model": {"source": "preset", "name": "llama-3.1-8b"}, "workload": {"prompts": ["x"]}})


def test_tui_header_says_simulated():
    """The live TUI over a simulated 70B node: the status line names the simulated device, the roofline panel
    its datasheet peaks, and a few steps' estimated kernels come through."""
    import asyncio

    from kvscope.cli.commands.live import live_app
    from kvscope.tui.panels.roofline_panel import RooflinePanel

    recipe = Recipe.from_dict({
        "name": "sim-tui", "device": "sim", "dtype": "bfloat16", "model": {"source": "preset", "name": "llama-3.1-70b"},
        "sim": {"gpu": "H100-80GB", "num_gpus": 8, "tp": 8},
        "workload": {"synthetic": {"num_requests": 4, "prompt_len": 64, "output_len": 4}}}, source="<sim>")

    async def scenario():
        app = live_app(recipe, start_paused=True, deterministic=True)
        async with app.run_test(size=(160, 50)) as pilot:
            assert await asyncio.to_thread(app.controller.wait_idle, 60)
            for _ in range(3):
                await pilot.press("n")
                assert await asyncio.to_thread(app.controller.wait_idle, 60)
            app.sync()
            status = str(app.query_one("#status").render())
            assert "simulated 8xH100-80GB tp8/cost-model" in status and "step 2" in status
            assert "simulated" in app.query_one(RooflinePanel).peaks.name

    asyncio.run(scenario())


def test_pool_is_what_kvscope_kv_computes(capsys):
    assert main(["kv", "llama-3.1-70b", "--gpu", "H100-80GB", "--gpus", "8", "--json"]) == 0
    blocks = json.loads(capsys.readouterr().out)["num_blocks"]
    recipe = Recipe.from_dict({"device": "sim", "dtype": "bfloat16", "model": {"source": "preset",
                               "name": "llama-3.1-70b"}, "sim": {"gpu": "H100-80GB", "num_gpus": 8},
                               "workload": {"prompts": ["x"]}})
    engine = LLMEngine(recipe)
    assert engine.num_blocks == blocks == 91050 and engine.kv_cache is None and engine.loaded.model is None
    assert engine.run_info().device == "simulated 8xH100-80GB tp8"


def test_trace_says_simulated(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(BAD.replace("MODEL", "llama-3.1-8b").replace("SIM", "{gpu: H200}"))
    assert main(["trace", str(path), "-o", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    trace = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert trace["otherData"]["device"] == "simulated 1xH200"
    assert trace["otherData"]["clock"].startswith("virtual ns of a simulated device")
    names = [e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"]
    assert "kvscope engine (simulated 1xH200)" in names
    header = json.loads((tmp_path / "t" / "events.jsonl").read_text().splitlines()[0])
    assert "simulated 1xH200" in json.dumps(header)
