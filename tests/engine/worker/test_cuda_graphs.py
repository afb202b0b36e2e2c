"""CUDA graphs for decode steps (kvscope.engine.worker.cuda_graphs), as far as a CPU can check them.

The capture itself needs CUDA (the GPU check runs it: benchmarks/gpu_engine.py throughput, graphs vs
eager). Here `DecodeGraphs(capture=False)` runs the same static buffers, padding and replay bookkeeping
eagerly, with the Triton kernels under the interpreter: greedy tokens must equal an engine without it,
with batches padded up the ladder. Also: the recipe's refusals, and how a graph's time becomes kernel events.
"""

import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

pytest.importorskip("triton")
from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.costmodel.roofline import LAYER_OPS
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.probe.kernel_events import GRAPH_BACKEND, KernelEventBuilder
from kvscope.engine.worker.cuda_graphs import DecodeGraphs, capture_sizes
from kvscope.errors import RecipeError

RECIPE = {
    "model": {"source": "random", "shape": "tiny-gqa3", "seed": 0},
    "dtype": "float32",
    "attention_backend": "triton",
    "cache": {"block_size": 4, "num_blocks": 256},
    "scheduler": {"max_num_seqs": 6, "max_num_batched_tokens": 64, "chunked_prefill": True},
    "workload": {"prompts": ["-"]},
}


def _run(graphs: bool) -> tuple[list[list[int]], DecodeGraphs | None]:
    engine = LLMEngine(Recipe.from_dict(RECIPE))
    if graphs:
        engine.runner.graphs = DecodeGraphs(engine.loaded.model, engine.device, 6, engine.max_model_len,
                                            engine.block_size, capture=False)
    g = torch.Generator().manual_seed(7)
    # five requests finishing at different steps: decode batches of 5, 4, 3, 2 and 1 (padded to 6, 4, 4, 2, 1)
    ids = [engine.add_request(torch.randint(0, 256, (n,), generator=g).tolist(),
                              SamplingParams(max_tokens=new, ignore_eos=True))
           for n, new in [(3, 4), (9, 6), (1, 8), (17, 10), (6, 12)]]
    tokens: dict[int, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    return [tokens[i] for i in ids], engine.runner.graphs


def test_padded_decode_replays_give_the_eager_tokens():
    want, _ = _run(graphs=False)
    got, graphs = _run(graphs=True)
    assert got == want
    assert [len(t) for t in got] == [4, 6, 8, 10, 12]
    assert graphs.replays >= 8  # every decode-only step went through the static buffers
    assert graphs.sizes == [1, 2, 4, 6]


def test_capture_sizes_ladder():
    assert capture_sizes(1) == [1]
    assert capture_sizes(5) == [1, 2, 4, 5]
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    assert capture_sizes(1000)[-1] == 256


def test_only_decode_steps_within_the_ladder_apply():
    engine = LLMEngine(Recipe.from_dict(RECIPE))
    graphs = DecodeGraphs(engine.loaded.model, engine.device, 6, engine.max_model_len, engine.block_size,
                          capture=False)
    runner = engine.runner
    ctx = runner.context([5, 9], [21, 40], [1, 1], [6, 10], [[5, 6], [8, 9, 10]])
    assert graphs.applies(torch.zeros(2, dtype=torch.int64), ctx, num_verified=0)
    assert not graphs.applies(torch.zeros(2, dtype=torch.int64), ctx, num_verified=1)  # drafts to verify
    prefill = runner.context([0, 1, 2], [0, 1, 2], [3], [3], [[0]])
    assert not graphs.applies(torch.zeros(3, dtype=torch.int64), prefill, num_verified=0)
    padded = runner.context([5, 0], [21, -1], [1], [6], [[5, 6]])  # a static-policy pad token after it
    assert not graphs.applies(torch.zeros(2, dtype=torch.int64), padded, num_verified=0)
    seven = runner.context([1] * 7, list(range(7)), [1] * 7, [2] * 7, [[i] for i in range(7)])
    assert graphs.padded_size(7) is None and not graphs.applies(torch.zeros(7, dtype=torch.int64), seven, 0)


def test_capture_needs_cuda():
    engine = LLMEngine(Recipe.from_dict(RECIPE))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, not cpu"):
        DecodeGraphs(engine.loaded.model, engine.device, 4, 64, 4)


@pytest.mark.parametrize(("extra", "message"), [
    ({"device": "cpu"}, "this recipe has device cpu"),
    ({"device": "cuda", "attention_backend": "torch"}, "attention_backend torch"),
    ({"cuda_graphs": "yes"}, "cuda_graphs: must be true or false"),
])
def test_recipe_refuses_cuda_graphs_where_they_cannot_run(extra, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({**RECIPE, "cuda_graphs": True, **extra})


def test_engine_on_a_cpu_refuses_cuda_graphs_in_one_line():
    recipe = Recipe.from_dict({**RECIPE, "device": "auto", "cuda_graphs": True})  # auto: checked at start
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: auto resolves to cuda")
    with pytest.raises(RecipeError, match="cuda_graphs: needs a CUDA device .* this run is on cpu with triton"):
        LLMEngine(recipe)


def test_a_graph_replay_becomes_the_forward_ops_with_estimated_shares():
    engine = LLMEngine(Recipe.from_dict(RECIPE))
    builder = KernelEventBuilder(engine.config, torch.float32, "triton", fused_norm_rope=True)
    costs = builder.costs([])
    costs["attention"] = costs["qkv"]  # any positive cost will do for the split
    events = builder.graph_split(3, 1_000, 91_000, costs, "T=4 B=4")
    layers = engine.config.num_layers
    assert len(events) == 2 + len(LAYER_OPS) * layers
    assert [e.op for e in events[:1 + len(LAYER_OPS)]] == ["embed", *LAYER_OPS]
    assert events[-1].op == "final_norm" and events[-1].end == 91_000 and events[0].start == 1_000
    assert all(a.end == b.start for a, b in itertools.pairwise(events))  # end to end, no gaps or overlaps
    assert {e.backend for e in events} == {GRAPH_BACKEND}
    qkv = [e for e in events if e.op == "qkv"]
    norm = [e for e in events if e.op == "attn_norm"]
    assert qkv[0].end - qkv[0].start > norm[0].end - norm[0].start  # shares follow the modelled bytes
    assert {e.layer for e in qkv} == set(range(layers))
