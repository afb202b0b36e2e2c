"""The analytic cost model and the roofline report: hand counts on a tiny shape, brute-force causal counts.

The tiny shape: 2 layers, hidden 8, 2 query heads, 1 KV head, head dim 4, FFN 16,
vocabulary 32; weights, activations and KV at 2 bytes. Every expected number
below is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvscope.config.model_config import ModelConfig
from kvscope.config.model_presets import get_preset
from kvscope.costmodel.devices import get_device
from kvscope.costmodel.roofline import (
    LAYER_OPS,
    MODEL_OPS,
    OpCost,
    causal_keys,
    kv_tokens_read,
    layer_op_costs,
    model_op_costs,
    step_bytes_written,
    step_op_costs,
)
from kvscope.costmodel.roofline_report import analyze_step
from kvscope.inspector.export.ascii_plot import PlotPoint, roofline_plot

TINY = ModelConfig("tiny", num_layers=2, hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4,
                   intermediate_size=16, vocab_size=32, tie_embeddings=True)
BYTES = {"weight_bytes": 2, "act_bytes": 2, "kv_bytes": 2}


def test_op_names_are_the_engine_contract() -> None:
    layer = layer_op_costs(TINY, [1], [1], **BYTES)
    outer = model_op_costs(TINY, [1], [1], **BYTES)
    assert tuple(layer) == ("attn_norm", "qkv", "rope", "kv_write", "attention", "o_proj", "mlp_norm", "mlp")
    assert tuple(layer) == LAYER_OPS
    assert tuple(outer) == MODEL_OPS == ("embed", "final_norm", "lm_head")


def test_decode_step_flops_by_hand() -> None:
    # two decode requests: 1 new token each, contexts 5 and 3 (incl. the new token); T = 2 tokens
    c = layer_op_costs(TINY, [1, 1], [5, 3], **BYTES)
    # q: 8 -> 2x4, k: 8 -> 4, v: 8 -> 4  => 8 x 16 weights; 2 tokens x 128 MACs x 2
    assert c["qkv"].flops == 512
    # scores: heads 2 x keys (5 + 3) x dim 4 = 64 MACs; values the same: 128 MACs
    assert c["attention"].flops == 256
    # o: 2x4 -> 8 = 64 MACs per token
    assert c["o_proj"].flops == 256
    # gate, up: 8 x 16 each, down: 16 x 8 => 384 MACs per token
    assert c["mlp"].flops == 1536
    # RMSNorm: 4 FLOPs x 8 elements x 2 tokens
    assert c["attn_norm"].flops == c["mlp_norm"].flops == 64
    # RoPE on q (2 heads) and k (1 head) of dim 4: 12 elements x 3 FLOPs x 2 tokens
    assert c["rope"].flops == 72
    assert c["kv_write"].flops == 0
    m = model_op_costs(TINY, [1, 1], [5, 3], **BYTES)
    # lm_head on one row per request: 2 rows x 8 x 32 MACs
    assert m["lm_head"].flops == 1024
    assert m["embed"].flops == 0 and m["final_norm"].flops == 64


def test_decode_step_bytes_by_hand() -> None:
    c = layer_op_costs(TINY, [1, 1], [5, 3], **BYTES)
    # weights 8*16*2 = 256; in 2 tokens x 8 x 2 = 32; out 2 x 16 x 2 = 64
    assert c["qkv"].bytes == 352
    # q in 2 tok x 2 heads x 4 x 2 B = 32, out the same = 32; K+V read: 8 tokens x (4 + 4) x 2 B = 128
    assert c["attention"].bytes == 192
    # K+V in from the projection 2 tok x 8 x 2 B = 32, written to the cache 32
    assert c["kv_write"].bytes == 64
    # weights 8*8*2 = 128; in 2 x 8 x 2 = 32; out 32
    assert c["o_proj"].bytes == 192
    # weights 3*8*16*2 = 768; in 32; out 32
    assert c["mlp"].bytes == 832
    # in 32, out 32, weight 8 x 2 = 16
    assert c["attn_norm"].bytes == 80
    # q, k read and written: 2 x 12 x 2 tok x 2 B = 96; cos/sin 4 values x 2 tok x 2 B = 16
    assert c["rope"].bytes == 112
    m = model_op_costs(TINY, [1, 1], [5, 3], **BYTES)
    # weights 8 x 32 x 2 = 512; in 2 rows x 8 x 2 = 32; logits 2 x 32 x 2 = 128
    assert m["lm_head"].bytes == 672
    # 2 embedding rows read (2 x 8 x 2) and written
    assert m["embed"].bytes == 64


def test_prefill_attention_is_causal() -> None:
    # one request, 4-token prompt: the queries see 1, 2, 3, 4 keys = 10; 2 heads x (4 + 4) x 10 MACs
    c = layer_op_costs(TINY, [4], [4], **BYTES)
    assert c["attention"].flops == 2 * 2 * 8 * 10
    # a chunk of 2 new tokens after 3 cached: positions 3, 4 see 4 and 5 keys
    chunk = layer_op_costs(TINY, [2], [5], **BYTES)
    assert chunk["attention"].flops == 2 * 2 * 8 * 9


@settings(max_examples=200, deadline=None)
@given(q=st.integers(0, 40), extra=st.integers(0, 40), window=st.integers(0, 50))
def test_causal_counts_match_brute_force(q: int, extra: int, window: int) -> None:
    s = q + extra
    positions = range(s - q, s)
    expect_keys = sum(min(p + 1, window) if window else p + 1 for p in positions)
    seen = {k for p in positions for k in range(p + 1) if not window or k > p - window}
    assert causal_keys(q, s, window) == expect_keys
    assert kv_tokens_read(q, s, window) == len(seen)


def test_sliding_window_layer_reads_at_most_the_window() -> None:
    shape = get_preset("gemma-2-9b")
    local = layer_op_costs(shape, [1], [8000], layer=0, **BYTES)
    global_ = layer_op_costs(shape, [1], [8000], layer=1, **BYTES)
    kv_row = 2 * 8 * 256 * 2
    assert global_["attention"].bytes - local["attention"].bytes == (8000 - 4096) * kv_row


def test_step_totals_sum_layers_and_model_ops() -> None:
    step = step_op_costs(TINY, [1, 3], [5, 3], **BYTES)
    layer = layer_op_costs(TINY, [1, 3], [5, 3], **BYTES)
    outer = model_op_costs(TINY, [1, 3], [5, 3], **BYTES)
    for op in LAYER_OPS:
        assert step[op] == OpCost(2 * layer[op].flops, 2 * layer[op].bytes)
    for op in MODEL_OPS:
        assert step[op] == outer[op]


def test_moe_touches_expected_experts() -> None:
    shape = get_preset("deepseek-v3")
    one = layer_op_costs(shape, [1], [10], layer=5, **BYTES)["mlp"]
    many = layer_op_costs(shape, [4096], [4096], layer=5, **BYTES)["mlp"]
    per_expert = 3 * 7168 * 2048 * 2
    router = 7168 * 256 * 2
    act = 2 * 7168 * 2
    assert one.bytes == (8 + 1) * per_expert + router + act  # 8 routed + 1 shared
    assert many.bytes == pytest.approx((256 + 1) * per_expert + router + 4096 * act, rel=1e-6)
    dense = layer_op_costs(shape, [1], [10], layer=0, **BYTES)["mlp"]
    assert dense.flops == 6 * 7168 * 18432


def test_bad_lengths_raise() -> None:
    with pytest.raises(ValueError):
        layer_op_costs(TINY, [3], [2], **BYTES)
    with pytest.raises(ValueError):
        model_op_costs(TINY, [1, 1], [2], **BYTES)


def test_decode_batch1_is_memory_bound_and_near_weights_over_bandwidth() -> None:
    shape, h100 = get_preset("llama-2-7b"), get_device("H100-80GB")
    r = analyze_step(shape, h100, batch=1, context=512, phase="decode", dtype="bf16")
    assert all(op.bound == "memory" for op in r.ops)
    weights_time = shape.num_params * 2 / h100.bandwidth
    assert r.step_time_s == pytest.approx(weights_time, rel=0.05)  # weights dominate at batch 1, short context
    assert r.tokens_per_step == 1


def test_prefill_matmuls_are_compute_bound() -> None:
    r = analyze_step(get_preset("llama-3.1-8b"), get_device("H100-80GB"), batch=1, context=4096, phase="prefill")
    bounds = {op.op: op.bound for op in r.ops}
    assert bounds["mlp"] == bounds["qkv"] == bounds["o_proj"] == "compute"
    assert bounds["lm_head"] == "memory"  # one row per request
    assert r.tokens_per_step == 4096
    assert r.overlapped_time_s <= r.step_time_s


def test_roofline_plot_places_points_on_the_roof() -> None:
    peak, bw = 1e15, 1e12  # ridge at 1000 FLOP/B
    text = roofline_plot([PlotPoint("low", 1.0, bw * 1.0, "a"), PlotPoint("high", 1e5, peak, "b")], peak, bw,
                         width=40, height=12)
    lines = text.splitlines()
    grid = [line.split("|", 1)[1] if "|" in line else "" for line in lines[:12]]
    row_a = next(i for i, g in enumerate(grid) if "a" in g)
    row_b = next(i for i, g in enumerate(grid) if "b" in g)
    assert row_b < row_a  # the compute-bound point sits higher
    assert "-" in grid[row_b]  # on the flat part of the roof
    assert grid[row_a].index("a") < grid[row_b].index("b")
    assert "a low" in lines[-1] and "b high" in lines[-1]
    # log scale: a point halfway (in decades) between the two sits halfway between their rows
    mid = roofline_plot([PlotPoint("low", 1.0, bw, "a"), PlotPoint("mid", 10 ** 1.5, bw * 10 ** 1.5, "m"),
                         PlotPoint("high", 1e3, peak, "b")], peak, bw, width=40, height=12).splitlines()
    rows = {ch: next(i for i, line in enumerate(mid[:12]) if ch in line.split("|", 1)[1]) for ch in "amb"}
    assert abs((rows["a"] + rows["b"]) / 2 - rows["m"]) <= 1


def test_engine_kernel_costs_equal_the_analytic_model_step_after_step():
    """The engine keeps the token-only costs per (tokens, pads, rows) and recomputes only the attention: every
    step's costs must still be exactly the analytic model's for that batch (cache hits included)."""
    import random

    import torch

    from kvscope.config.sampling_params import SamplingParams
    from kvscope.engine.core.request import Request
    from kvscope.engine.core.scheduler import ScheduledRequest
    from kvscope.engine.probe.kernel_events import KernelEventBuilder

    cfg = get_preset("tiny-gqa3")
    builder = KernelEventBuilder(cfg, torch.float16, "torch")
    rng = random.Random(3)
    for _ in range(200):
        batch = []
        for i in range(rng.randint(1, 6)):
            req = Request(i, [1] * 8, SamplingParams(), 8, 0)
            n = rng.choice([1, 1, rng.randint(1, 9)])
            req.num_computed_tokens = n + rng.randint(0, 40)
            batch.append(ScheduledRequest(req, n))
        pads = rng.choice([0, 0, rng.randint(1, 4)])
        q = [s.num_tokens for s in batch]
        ctx = [s.request.num_computed_tokens for s in batch]
        want = layer_op_costs(cfg, q + [1] * pads, ctx + [1] * pads, weight_bytes=2, act_bytes=2,
                              kv_bytes=2)
        want.update(model_op_costs(cfg, q, ctx, weight_bytes=2, act_bytes=2, kv_bytes=2))
        assert builder.costs(batch, pads) == want


def test_bytes_written_by_hand_and_within_the_steps_bytes() -> None:
    # per token and layer: outputs of attn_norm, o_proj, mlp_norm, mlp (4 x 8), qkv (2x4 + 4 + 4 = 16),
    # rope (3 heads x 4 = 12), attention (2 x 4 = 8) at 2 bytes = 136; K/V written (4 + 4) at 2 bytes = 16
    # 2 tokens x 2 layers x 152 = 608; embed and final norm 2 x 2 x 8 x 2 = 64; logits of 2 rows 2 x 32 x 2 = 128
    assert step_bytes_written(TINY, 2, 2, act_bytes=2, kv_bytes=2) == 800
    for name in ("llama-3.1-8b", "deepseek-v3", "smollm2-135m"):
        shape = get_preset(name)
        costs = step_op_costs(shape, [1, 1, 40], [300, 20, 40], **BYTES)
        written = step_bytes_written(shape, 42, 3, act_bytes=2, kv_bytes=2)
        assert 0 < written < sum(c.bytes for c in costs.values())
        assert written > costs["kv_write"].bytes // 2  # the K/V half of kv_write's bytes is written
