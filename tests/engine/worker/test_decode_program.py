"""The CPU decode program (kvscope.engine.worker.decode_program, kernels/cpu/decode_cpu.c): a float32 decode
step, ids to logits, as one C call, against the model run eagerly (on each build of the C kernels: AVX-512 where the CPU
has it, portable); the engine's tokens with and without it; its measured ops; a bad token id; a ctypes mirror of its
struct that does not match the C one."""

from __future__ import annotations

import ctypes
import itertools

import pytest
import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.costmodel.roofline import LAYER_OPS, STEP_OPS
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.probe.op_timer import PROGRAM_BACKEND
from kvscope.engine.worker.decode_program import CpuDecodePrograms
from kvscope.events.bus import EventBus, EventList
from kvscope.events.records import KernelEvent, StepEnd
from kvscope.kernels.cpu import decode_cpu

RECIPE = {
    "model": {"source": "random", "shape": "tiny-gqa3", "seed": 0},
    "dtype": "float32", "device": "cpu", "attention_backend": "torch",
    "cache": {"block_size": 4, "num_blocks": 256},
    "scheduler": {"max_num_seqs": 6, "max_num_batched_tokens": 64, "chunked_prefill": True},
    "workload": {"prompts": ["-"]},
}


def _engine(**extra) -> LLMEngine:
    return LLMEngine(Recipe.from_dict({**RECIPE, **extra}))


def test_the_engine_uses_programs_for_float32_on_a_cpu_only():
    assert isinstance(_engine().runner.graphs, CpuDecodePrograms)
    assert _engine(dtype="bfloat16").runner.graphs is None  # 16-bit: the model's own torch code
    assert _engine().runner.graphs.sizes == [1, 2, 4, 6]


@pytest.mark.parametrize("max_num_seqs, batches", [(6, (1, 3, 5, 6)), (96, (90,))])
def test_program_logits_match_the_eager_model(max_num_seqs, batches, cpu_isa):
    """Small batches, some padded, and one of 90 (padded to 96): every thread has tokens of its own to
    rotate and store."""
    engine = _engine(scheduler={**RECIPE["scheduler"], "max_num_seqs": max_num_seqs},
                     cache={"block_size": 4, "num_blocks": 5 * max_num_seqs + 8})
    programs = engine.runner.graphs
    g = torch.Generator().manual_seed(3)
    k_cache = engine.runner.kv_layers[0][0]
    for layer_k, layer_v in engine.runner.kv_layers:  # some context in the pools to attend to
        layer_k.copy_(torch.randn(layer_k.shape, generator=g))
        layer_v.copy_(torch.randn(layer_v.shape, generator=g))
    for n in batches:  # 3, 5 and 90 pad to 4, 6 and 96
        blocks = torch.randperm(5 * n, generator=g).tolist()  # each request its own blocks: no slot written twice
        tables = [blocks[5 * i:5 * i + 5] for i in range(n)]
        seq_lens = [int(s) for s in torch.randint(1, 20, (n,), generator=g)]
        positions = [s - 1 for s in seq_lens]
        slots = [t[p // 4] * 4 + p % 4 for t, p in zip(tables, positions)]
        ids = torch.randint(0, 256, (n,), generator=g)
        ctx = engine.runner.context(positions, slots, [1] * n, seq_lens, tables)
        assert programs.applies(ids, ctx, num_verified=0)
        pools = [(k.clone(), v.clone()) for k, v in engine.runner.kv_layers]
        got = programs.run(ids, ctx)
        written = [(k.clone(), v.clone()) for k, v in engine.runner.kv_layers]
        for (k, v), (k0, v0) in zip(engine.runner.kv_layers, pools):
            k.copy_(k0)
            v.copy_(v0)
        engine.runner.graphs = None
        model = engine.loaded.model
        want = model.compute_logits(model(ids, engine.runner.context(positions, slots, [1] * n, seq_lens, tables)))
        engine.runner.graphs = programs
        assert got.shape == (n, engine.config.vocab_size)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        rows = torch.tensor([n - 1])
        torch.testing.assert_close(programs.logits_of(ids, ctx, rows), want[rows], rtol=1e-5, atol=1e-5)
        for (k, v), (k1, v1) in zip(engine.runner.kv_layers, written):  # the same K/V written, at the same slots
            torch.testing.assert_close(k1, k, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v1, v, rtol=1e-5, atol=1e-5)
    assert not torch.equal(k_cache, torch.zeros_like(k_cache))


def _generate(programs: bool, bus: EventBus | None = None) -> tuple[list[list[int]], LLMEngine]:
    engine = LLMEngine(Recipe.from_dict(RECIPE), bus=bus)
    if not programs:
        engine.runner.graphs = None
    g = torch.Generator().manual_seed(7)
    ids = [engine.add_request(torch.randint(0, 256, (n,), generator=g).tolist(),
                              SamplingParams(max_tokens=new, ignore_eos=True))
           for n, new in [(3, 4), (9, 6), (1, 8), (17, 10), (6, 12)]]
    while engine.has_unfinished():
        engine.step()
    return [list(engine.output(i).token_ids) for i in ids], engine


def test_engine_tokens_are_the_same_with_and_without_programs(cpu_isa):
    want, _ = _generate(programs=False)
    got, engine = _generate(programs=True)
    assert got == want and [len(t) for t in got] == [4, 6, 8, 10, 12]
    assert engine.runner.graphs.replays >= 8


def test_program_steps_keep_measured_kernel_events():
    bus = EventBus()
    events = bus.subscribe(EventList())
    _, engine = _generate(programs=True, bus=bus)
    layers = engine.config.num_layers
    kernels = [e for e in events.events if isinstance(e, KernelEvent)]
    steps = {e.step: e for e in events.events if isinstance(e, StepEnd)}
    program_steps = sorted({e.step for e in kernels if e.backend == PROGRAM_BACKEND})
    assert len(program_steps) >= 8
    for step in program_steps:
        ops = [e for e in kernels if e.step == step]
        inside = [e for e in ops if e.backend == PROGRAM_BACKEND]
        assert [(e.op, e.layer) for e in inside] == (
            [("embed", -1)] + [(op, layer) for layer in range(layers) for op in LAYER_OPS]
            + [("final_norm", -1), ("lm_head", -1)])
        assert {e.op for e in inside} == set(STEP_OPS)
        assert all(e.start <= e.end for e in inside)
        assert all(a.end <= b.start + 1 for a, b in itertools.pairwise(inside))  # one after the other
        assert [e.op for e in ops if e.backend != PROGRAM_BACKEND] == ["sample"]  # nothing else ran in Python
        end = steps[step]
        assert end.begin_ts <= inside[0].start and inside[-1].end <= end.ts  # inside the step
        assert all(e.flops > 0 and e.bytes > 0 for e in inside if e.op not in ("rope", "kv_write", "embed"))


def test_a_token_id_outside_the_vocabulary_fails_the_step_in_one_line():
    engine = _engine()
    programs = engine.runner.graphs
    ctx = engine.runner.context([0], [0], [1], [1], [[0]])
    with pytest.raises(IndexError, match="outside the vocabulary"):
        programs.run(torch.tensor([engine.config.vocab_size]), ctx)
    assert programs.run(torch.tensor([5]), ctx).shape == (1, engine.config.vocab_size)  # the next step runs


class _Swapped(ctypes.Structure):
    """decode_cpu's mirror of DecodeProgram with two int fields swapped: the same size, every offset but two."""

    _fields_ = [("q_size" if name == "kv_size" else "kv_size" if name == "q_size" else name, ctype)
                for name, ctype in decode_cpu._Program._fields_]


@pytest.fixture
def wrong_mirror(monkeypatch):
    """The decode program's binding with a wrong ctypes mirror of its struct (its entry points looked up anew)."""
    monkeypatch.setattr(decode_cpu, "_Program", _Swapped)
    decode_cpu._entry_points.cache_clear()
    yield
    monkeypatch.undo()
    decode_cpu._entry_points.cache_clear()


def test_a_wrong_struct_mirror_turns_the_program_off_in_one_line_and_the_engine_runs_without(wrong_mirror):
    with pytest.warns(RuntimeWarning, match="DecodeProgram") as warned:
        assert not decode_cpu.decode_program_available()
    (line,) = [str(w.message) for w in warned]
    assert "\n" not in line and "at field 3: q_size (offset 12" in line and "kv_size (offset 12" in line
    assert decode_cpu.decode_program_status().startswith("off (decode_cpu.c: struct DecodeProgram and its ctypes")
    engine = _engine()
    assert engine.runner.graphs is None  # the eager model: the step's ops one call each
    g = torch.Generator().manual_seed(7)
    request = engine.add_request(torch.randint(0, 256, (5,), generator=g).tolist(),
                                 SamplingParams(max_tokens=4, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    assert len(engine.output(request).token_ids) == 4
