"""The simulator's tools: profiles (fit, load, apply), `kvscope calibrate`, and the capacity search."""

import json
import re

import pytest

from kvscope.cli.commands.calibrate import ROW_LADDER
from kvscope.cli.main import main
from kvscope.config.model_presets import get_preset
from kvscope.costmodel.devices import get_device
from kvscope.costmodel.roofline import roof_time, step_op_costs
from kvscope.costmodel.sim_cost import StepCostModel
from kvscope.costmodel.sim_profile import (
    OP_CLASSES,
    OpTiming,
    ProfileError,
    SimProfile,
    load_profile,
    profile_from_dict,
)
from kvscope.inspector.calibration import fit_roofs
from kvscope.inspector.capacity import Probe, SloError, parse_slo, search_max_rate
from kvscope.inspector.metrics import RunSummary


def test_fit_roofs_recovers_a_known_roofline():
    """Ops that take 5 us + max(FLOPs x 1e-11, bytes x 2e-10) exactly: the fit finds those three numbers."""
    c0, a, b = 5e-6, 1e-11, 2e-10
    ops = [(f, n, c0 + max(f * a, n * b)) for f in (0, 10**5, 10**6, 10**7, 10**8) for n in (10**3, 10**5, 10**6)]
    got = fit_roofs(ops)
    assert got == pytest.approx((c0, a, b, 0.0), rel=1e-6)
    # with 1 to 16 requests per op and 30 us each on top: the per-request term comes out too
    seqs = [1 + i % 16 for i in range(len(ops))]
    timed = [(f, n, t + 3e-5 * k) for (f, n, t), k in zip(ops, seqs)]
    assert fit_roofs(timed, seqs) == pytest.approx((c0, a, b, 3e-5), rel=1e-6)


def test_a_profile_derates_the_roofs():
    shape, h100 = get_preset("llama-3.1-8b"), get_device("H100-80GB")
    ideal = StepCostModel(shape, h100, dtype="bf16")
    half = SimProfile(dict.fromkeys(OP_CLASSES, 0.5), dict.fromkeys(OP_CLASSES, 0.5))
    halved = StepCostModel(shape, h100, dtype="bf16", profile=half)
    batch = ([1] * 8 + [512], [2048] * 8 + [512])
    assert halved.step_time(*batch, 9).forward_s == pytest.approx(2 * ideal.step_time(*batch, 9).forward_s)
    slow_memory = SimProfile(dict.fromkeys(OP_CLASSES, 1.0), dict.fromkeys(OP_CLASSES, 0.5))
    decode = ([1] * 8, [2048] * 8)  # memory-bound: only the bandwidth derating shows
    assert StepCostModel(shape, h100, dtype="bf16", profile=slow_memory).step_time(*decode, 8).forward_s == \
        pytest.approx(2 * ideal.step_time(*decode, 8).forward_s)
    per_request = SimProfile(attention_per_seq_s=1e-6)  # 8 requests x 32 layers x 1 us on top
    assert StepCostModel(shape, h100, dtype="bf16", profile=per_request).step_time(*decode, 8).forward_s == \
        pytest.approx(ideal.step_time(*decode, 8).forward_s + 8 * 32 * 1e-6)


def test_op_timing_interpolates_between_measured_row_counts():
    t = OpTiming("mlp", 8, 16, "fp32", (1, 2, 4, 8), (10.0, 20.0, 16.0, 24.0))
    assert [t.seconds(n) for n in (1, 2, 4, 8)] == [10.0, 20.0, 16.0, 24.0]  # the measured points, dips kept
    assert t.seconds(3) == pytest.approx(18.0) and t.seconds(6) == pytest.approx(20.0)
    assert t.seconds(12) == pytest.approx(32.0)  # beyond the last: along the last segment (2 per row)
    assert t.seconds(0) == 0.0
    assert OpTiming("mlp", 8, 16, "fp32", (4,), (8.0,)).seconds(2) == pytest.approx(4.0)  # proportional


LLAMA8B_TABLES = [  # Llama-3.1-8B's matmul shapes, written out by hand: q 32 x 128, k and v 8 x 128 each
    {"op": "qkv", "in": 4096, "out": 6144, "rows": [1, 16], "seconds": [1e-3, 2.5e-3]},
    {"op": "o_proj", "in": 4096, "out": 4096, "rows": [1, 16], "seconds": [2e-3, 2e-3]},
    {"op": "mlp", "in": 4096, "out": 14336, "rows": [1, 4, 16], "seconds": [3e-3, 1e-3, 4e-3]},
    {"op": "lm_head", "in": 4096, "out": 128256, "rows": [1, 2], "seconds": [5e-3, 6e-3]},
]


def _tabled_profile(dtype="fp32", relative_to="cpu"):
    return profile_from_dict({"kvscope_profile": 1, "relative_to": relative_to,
                              "compute_efficiency": dict.fromkeys(OP_CLASSES, 1.0),
                              "memory_efficiency": dict.fromkeys(OP_CLASSES, 1.0),
                              "op_timings": [{**t, "dtype": dtype} for t in LLAMA8B_TABLES]}, "test")


def test_measured_matmul_times_replace_the_roofline_on_the_measured_device():
    """Decode of 4 requests, 3 of them sampled: the measured qkv / o_proj / MLP at 4 rows (interpolated or
    read) for each of 32 layers and the LM head at the 3 sampled rows replace those ops' roofline times."""
    shape, cpu = get_preset("llama-3.1-8b"), get_device("cpu")
    batch = ([1] * 4, [1000] * 4)
    ideal = StepCostModel(shape, cpu, dtype="fp32").step_time(*batch, 3).forward_s
    tabled = StepCostModel(shape, cpu, dtype="fp32", profile=_tabled_profile()).step_time(*batch, 3).forward_s
    costs = step_op_costs(shape, *batch, weight_bytes=4, act_bytes=4, kv_bytes=4)
    roofline = sum(roof_time(costs[op], cpu.peak_flops("fp32"), cpu.bandwidth)
                   for op in ("qkv", "o_proj", "mlp", "lm_head"))
    # qkv 1.3 ms (a fifth of the way from 1 to 16 rows), o_proj 2, MLP 1 (a measured dip), per layer;
    # lm_head 7 ms (3 rows: one beyond the last measured, along its slope)
    measured = 32 * (1.3e-3 + 2e-3 + 1e-3) + 7e-3
    assert tabled - ideal == pytest.approx(measured - roofline, rel=1e-9)
    # another device, another dtype, another shape (tensor parallelism halves the per-GPU shapes): the roofline
    for other in (StepCostModel(shape, get_device("H100-80GB"), dtype="fp32", profile=_tabled_profile()),
                  StepCostModel(shape, cpu, dtype="fp32", profile=_tabled_profile("bf16")),
                  StepCostModel(shape, cpu, dtype="fp32", tp=2, profile=_tabled_profile())):
        assert other.timed == {}
    assert StepCostModel(shape, cpu, dtype="fp32", profile=_tabled_profile(relative_to="CPU")).timed


def test_op_timings_survive_a_round_trip(tmp_path):
    profile = _tabled_profile()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile.to_dict()))
    assert load_profile(path).op_timings == profile.op_timings and len(profile.op_timings) == 4


GOOD = json.dumps({"kvscope_profile": 1, "compute_efficiency": dict.fromkeys(OP_CLASSES, 1),
                   "memory_efficiency": dict.fromkeys(OP_CLASSES, 1)})


@pytest.mark.parametrize("text,needle", [
    ("not json", "not JSON"),
    ('{"kvscope_profile": 1}', "compute_efficiency must be an object"),
    ('{"kvscope_profile": 2, "compute_efficiency": {}}', "not a kvscope profile"),
    ('{"kvscope_profile": 1, "compute_efficiency": {"matmul": 1, "attention": 1, "elementwise": 0},'
     ' "memory_efficiency": {}}', "compute_efficiency.elementwise: must be a finite number > 0"),
    (GOOD[:-1] + ', "op_timings": {}}', "op_timings: must be a list"),
    (GOOD[:-1] + ', "op_timings": [{"op": "attn", "in": 1, "out": 1, "dtype": "fp32", "rows": [1], '
     '"seconds": [1]}]}', "op_timings[0].op: must be one of qkv, o_proj, mlp, lm_head"),
    (GOOD[:-1] + ', "op_timings": [{"op": "mlp", "in": 1, "out": 1, "dtype": "fp32", "rows": [2, 1], '
     '"seconds": [1, 1]}]}', "op_timings[0].rows: must be strictly ascending"),
    (GOOD[:-1] + ', "op_timings": [{"op": "mlp", "in": 1, "out": 1, "dtype": "fp32", "rows": [1], '
     '"seconds": [1, 2]}]}', "rows and seconds must be non-empty lists of the same length"),
    (GOOD[:-1] + ', "op_timings": [{"op": "mlp", "in": 0, "out": 1, "dtype": "fp32", "rows": [1], '
     '"seconds": [1]}]}', "op_timings[0].in: must be a positive integer"),
    (GOOD[:-1] + ', "op_timings": [{"op": "mlp", "in": 1, "out": 1, "dtype": "fp32", "rows": [1], '
     '"seconds": [-1]}]}', "op_timings[0].seconds[0]: must be a finite number >= 0"),
])
def test_bad_profile_files(tmp_path, text, needle):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ProfileError, match=re.escape(needle)) as info:
        load_profile(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_calibrate_writes_a_profile_the_simulator_loads(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    assert main(["calibrate", "--model", "tiny", "--requests", "4", "-o", str(out)]) == 0
    profile = load_profile(out)
    assert profile.relative_to == "cpu" and profile.fit["steps_timed"] == profile.fit["steps_untimed"] > 3
    assert all(v > 0 for v in profile.compute_efficiency.values())
    # per-shape timings of the tiny model's four matmuls, over the whole ladder; the simulator of it uses them
    assert sorted(t.op for t in profile.op_timings) == ["lm_head", "mlp", "o_proj", "qkv"]
    assert all(t.rows == ROW_LADDER and min(t.times) > 0 and t.dtype == "fp32" for t in profile.op_timings)
    shape = get_preset("tiny")
    assert sorted(StepCostModel(shape, get_device("cpu"), dtype="fp32", profile=profile).timed) == \
        ["lm_head", "mlp", "o_proj", "qkv"]
    assert "sim: {gpu: cpu, profile:" in capsys.readouterr().out
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"device: sim\nmodel: {{source: random, shape: tiny}}\nsim: {{gpu: cpu, profile: {out}}}\n"
                      "workload: {synthetic: {num_requests: 3, prompt_len: 20, output_len: 5}}\n")
    assert main(["run", str(recipe), "--headless", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generated_tokens"] == 15


def test_slo_parsing():
    assert parse_slo("ttft_p90:2000").limit_ms == 2000 and parse_slo("TBT_p99.9:200").percentile == 99.9
    for bad in ("ttft:2000", "tpot_p90:5", "ttft_p0:5", "ttft_p90:-1", "ttft_p90"):
        with pytest.raises(SloError):
            parse_slo(bad)


@pytest.mark.parametrize("start", [1.0, 50.0, 10.0])
def test_search_brackets_the_highest_passing_rate(start):
    """A configuration that meets its SLOs up to exactly 10 req/s: the answer is within 5% below 10."""
    def run(rate):
        return Probe(rate, RunSummary(), [rate], rate <= 10.0)

    rate, best, probes = search_max_rate(run, start=start)
    assert 9.5 <= rate <= 10.0 and best.rate == rate
    assert any(not p.ok and p.rate <= rate * 1.05 + 1e-9 for p in probes)  # a failure just above it


SIM = """
device: sim
dtype: bfloat16
model: {source: preset, name: llama-3.1-8b}
sim: {gpu: GPU}
scheduler: {max_num_seqs: 64, max_num_batched_tokens: 2048, max_model_len: 4096}
workload: {synthetic: {num_requests: 60, prompt_len: {min: 256, max: 1024}, output_len: {min: 32, max: 96}}}
variants:
  - {name: a100, overrides: {sim: {gpu: A100-80GB}}}
  - {name: h200, overrides: {sim: {gpu: H200}}}
"""


def test_capacity_search_table_json_and_chart(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(SIM.replace("GPU", "H100"))
    loose, tight = tmp_path / "loose.json", tmp_path / "tight.json"
    chart = tmp_path / "c.svg"
    assert main(["bench", str(path), "--max-rate", "--start-rate", "8", "--slo", "ttft_p90:1000",
                 "--json", str(loose), "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "max req/s" in out and "a100" in out and "h200" in out
    assert main(["bench", str(path), "--max-rate", "--start-rate", "8", "--slo", "ttft_p90:200",
                 "--json", str(tight)]) == 0
    capsys.readouterr()
    rates = {v["name"]: v["max_rate"] for v in json.loads(loose.read_text())["variants"]}
    tight_rates = {v["name"]: v["max_rate"] for v in json.loads(tight.read_text())["variants"]}
    assert rates["h200"] > rates["a100"] > 0  # 3x the compute and 2.4x the bandwidth
    assert tight_rates["a100"] <= rates["a100"] and tight_rates["h200"] <= rates["h200"]
    svg = chart.read_text()
    assert 'data-metric="max request rate meeting the SLOs (req/s)"' in svg and 'data-variant="h200"' in svg


@pytest.mark.parametrize("argv,needle", [
    (["--max-rate", "--slo", "ttft:5"], "--slo 'ttft:5'"),
    (["--slo", "ttft_p90:5"], "--slo: only a capacity search"),
])
def test_capacity_bad_input(tmp_path, capsys, argv, needle):
    path = tmp_path / "r.yaml"
    path.write_text(SIM.replace("GPU", "H100"))
    assert main(["bench", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_capacity_search_needs_a_simulated_device(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("model: {source: random, shape: tiny}\nworkload: {synthetic: {num_requests: 2}}\n")
    assert main(["bench", str(path), "--max-rate"]) == 2
    assert "use device: sim" in capsys.readouterr().err
