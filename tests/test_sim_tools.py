"""The simulator's tools: profiles (fit, load, apply), `kvscope calibrate`, and the capacity search."""

import json

import pytest

from kvscope.cli.main import main
from kvscope.engine.model_presets import get_preset
from kvscope.inspector.calibration import fit_roofs
from kvscope.inspector.capacity import Probe, SloError, parse_slo, search_max_rate
from kvscope.inspector.devices import get_device
from kvscope.inspector.metrics import RunSummary
from kvscope.inspector.sim_cost import StepCostModel
from kvscope.inspector.sim_profile import OP_CLASSES, ProfileError, SimProfile, load_profile


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


@pytest.mark.parametrize("text,needle", [
    ("not json", "not JSON"),
    ('{"kvscope_profile": 1}', "compute_efficiency must be an object"),
    ('{"kvscope_profile": 2, "compute_efficiency": {}}', "not a kvscope profile"),
    ('{"kvscope_profile": 1, "compute_efficiency": {"matmul": 1, "attention": 1, "elementwise": 0},'
     ' "memory_efficiency": {}}', "compute_efficiency.elementwise: must be a finite number > 0"),
])
def test_bad_profile_files(tmp_path, text, needle):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ProfileError, match=needle) as info:
        load_profile(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_calibrate_writes_a_profile_the_simulator_loads(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    assert main(["calibrate", "--model", "tiny", "--requests", "4", "-o", str(out)]) == 0
    profile = load_profile(out)
    assert profile.relative_to == "cpu" and profile.fit["steps_timed"] == profile.fit["steps_untimed"] > 3
    assert all(v > 0 for v in profile.compute_efficiency.values())
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
