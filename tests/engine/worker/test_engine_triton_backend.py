"""The engine with `attention_backend: triton` (interpreted on CPU) generates what `torch` generates.

A tiny random GQA model (3 query heads per KV head, untied head so greedy
outputs vary from token to token), prompts of different lengths, chunked
prefill under a small token budget so prefill chunks share steps with decodes,
block sizes 16 and 1. Greedy decoding must agree token for token.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

pytest.importorskip("triton")
llm_module = pytest.importorskip("kvscope.engine.llm")
from kvscope.config.sampling_params import SamplingParams  # noqa: E402
from kvscope.events.bus import EventBus  # noqa: E402
from kvscope.events.records import KernelEvent, StepEnd  # noqa: E402

PROMPT_LENGTHS = (1, 5, 23, 40)


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def _generate(backend: str, block_size: int, bus: EventBus | None = None) -> list[list[int]]:
    recipe = {
        "model": {"source": "random", "shape": "tiny-gqa3", "seed": 0},
        "dtype": "float32",
        "attention_backend": backend,
        "cache": {"block_size": block_size, "num_blocks": 2048 // block_size},
        "scheduler": {"max_num_batched_tokens": 24, "chunked_prefill": True},
    }
    llm = llm_module.LLM(recipe, bus=bus)
    outs = llm.generate(_prompts(), SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    return [list(o.token_ids) for o in outs]


@pytest.mark.parametrize("block_size", [16, 1])
def test_triton_backend_generates_the_torch_tokens(block_size):
    events: list = []
    bus = EventBus()
    bus.subscribe(events.append)
    got = _generate("triton", block_size, bus)
    want = _generate("torch", block_size)
    assert got == want
    assert all(len(t) == 10 for t in got)
    assert len({tuple(t) for t in got}) == len(got), "degenerate model: outputs do not depend on the prompt"
    # the run really mixed prefill chunks with decodes, and attention ran on the triton backend
    steps = [e for e in events if isinstance(e, StepEnd)]
    assert any(e.prefill and e.decode for e in steps)
    chunks_per_request: dict[int, int] = {}
    for e in steps:
        for rid, _ in e.prefill:
            chunks_per_request[rid] = chunks_per_request.get(rid, 0) + 1
    assert max(chunks_per_request.values()) >= 2, "no prompt was split into chunks"
    backends = {e.backend for e in events if isinstance(e, KernelEvent) and e.op == "attention"}
    assert backends == {"triton"}
