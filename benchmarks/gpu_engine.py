"""The engine steps of the GPU check (benchmarks/gpu_check.py): greedy equality torch vs triton backend, and
decode throughput, on random-weight models; each prints one JSON line `RESULT {...}` as its last line.

    python benchmarks/gpu_engine.py equality --shapes smollm2-135m llama-1b --dtype bfloat16 --device cuda
    python benchmarks/gpu_engine.py throughput --shape llama-1b --batches 1 64 256 --copy-gbps 4300
    python benchmarks/gpu_engine.py equality --shapes tiny-gqa3 --dtype float32 --device cpu   # CPU dry run

Shapes: the engine's presets (kvscope.config.model_presets) plus `llama-1b`, Llama-3.2-1B's shape
(https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json), built here with the loader's own
random weights (kvscope.engine.model.random_source.random_state_dict) and handed to LLMEngine as a LoadedModel.
Throughput: B requests of PROMPT random tokens, then STEPS decode steps with every request decoding;
decode tokens/s and the median decode step against its bandwidth floor (weights + K/V read, over the copy
bandwidth given). CUDA graphs: measured only when the recipe schema knows `cuda_graphs`, else reported as
not implemented.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

LLAMA_1B = {"name": "llama-1b", "num_layers": 16, "hidden_size": 2048, "num_heads": 32, "num_kv_heads": 8,
            "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256, "tie_embeddings": True,
            "max_position_embeddings": 131072, "rope_theta": 500000.0}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(shape: str, dtype: str, device: str):
    """A LoadedModel of random weights (seed 0) of a preset shape or llama-1b."""
    from kvscope.config.model_config import ModelConfig, with_special_tokens
    from kvscope.engine.model.loader import LoadedModel, load_model
    from kvscope.engine.model.random_source import random_state_dict
    from kvscope.engine.model.tokenizer import ByteTokenizer

    dev, dt = torch.device(device), DTYPES[dtype]
    if shape != "llama-1b":
        model, config, tok = load_model({"source": "random", "shape": shape, "seed": 0}, dt, dev)
        return LoadedModel(model, config, tok, dt, dev)
    from kvscope.engine.model.llama import LlamaModel

    tok = ByteTokenizer(LLAMA_1B["vocab_size"])
    config = with_special_tokens(ModelConfig(**LLAMA_1B), tok.bos_token_id, tok.eos_token_ids)
    model = LlamaModel.from_state_dict(config, random_state_dict(config, 0), dt, dev)
    return LoadedModel(model, config, tok, dt, dev)


def recipe(loaded, backend: str, max_seqs: int, num_blocks: int, budget: int, extra: dict | None = None):
    from kvscope.config.recipe import Recipe

    return Recipe.from_dict({
        "model": {"source": "random", "shape": "tiny"},  # unused: the engine gets the LoadedModel
        "dtype": str(loaded.dtype).removeprefix("torch."), "device": loaded.device.type,
        "attention_backend": backend, "cache": {"block_size": 16, "num_blocks": num_blocks},
        "scheduler": {"max_num_seqs": max_seqs, "max_num_batched_tokens": budget, "chunked_prefill": True},
        "workload": {"prompts": ["-"]}, **(extra or {}),
    })


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, min(vocab, 256), (length,), generator=g).tolist() for _ in range(n)]


def greedy(loaded, backend: str, batch: list[list[int]], max_tokens: int,
           extra: dict | None = None) -> list[list[int]]:
    from kvscope.config.sampling_params import SamplingParams
    from kvscope.engine.llm_engine import LLMEngine

    need = sum(-(-(len(p) + max_tokens) // 16) for p in batch) + 4
    engine = LLMEngine(recipe(loaded, backend, len(batch), need, 64, extra), loaded=loaded, kernel_events=False)
    ids = [engine.add_request(p, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
           for p in batch]
    while engine.has_unfinished():
        engine.step()
    return [list(engine.output(i).token_ids) for i in ids]


def cmd_equality(args) -> dict:
    result: dict = {"dtype": args.dtype, "device": args.device, "shapes": {}}
    all_equal = True
    for shape in args.shapes:
        t0 = time.perf_counter()
        loaded = load(shape, args.dtype, args.device)
        batch = [p[: n] for p, n in zip(prompts(len(args.prompt_lens), max(args.prompt_lens),
                                                loaded.config.vocab_size, 1), args.prompt_lens)]
        want = greedy(loaded, "torch", batch, args.max_tokens)
        got = greedy(loaded, "triton", batch, args.max_tokens)
        same = sum(a == b for a, b in zip(got, want))
        prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(got, want)]
        varied = len({tuple(t) for t in want}) == len(want)
        all_equal &= same == len(want) and varied
        result["shapes"][shape] = {"identical": f"{same}/{len(want)}", "matching_prefix": prefix,
                                   "outputs_differ_by_prompt": varied, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{shape}: {same}/{len(want)} identical greedy sequences, matching prefixes {prefix}", flush=True)
        if args.device == "cuda" and cuda_graphs_supported():  # decode steps replayed as CUDA graphs: same tokens
            graphed = greedy(loaded, "triton", batch, args.max_tokens, {"cuda_graphs": True})
            same_graphed = sum(a == b for a, b in zip(graphed, got))
            all_equal &= same_graphed == len(got)
            result["shapes"][shape]["cuda_graphs_identical_to_eager_triton"] = f"{same_graphed}/{len(got)}"
            print(f"{shape}: CUDA graphs {same_graphed}/{len(got)} identical to eager triton", flush=True)
        del loaded
        if args.device == "cuda":
            torch.cuda.empty_cache()
    result["ok"] = all_equal
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def decode_run(loaded, batch: int, prompt_len: int, steps: int, extra: dict | None) -> dict:
    """tokens/s of decode steps with every request decoding, and the median step time."""
    from kvscope.config.sampling_params import SamplingParams
    from kvscope.engine.llm_engine import LLMEngine

    blocks = batch * -(-(prompt_len + steps + 2) // 16) + 4
    engine = LLMEngine(recipe(loaded, "auto", batch, blocks, max(2048, prompt_len), extra), loaded=loaded,
                       kernel_events=False)
    ids = [engine.add_request(p, SamplingParams(max_tokens=steps + 2, temperature=0.0, ignore_eos=True))
           for p in prompts(batch, prompt_len, loaded.config.vocab_size, 2)]
    # prefill (and the first sampled token) until every request is decoding
    while any(len(engine.output(r).token_ids) == 0 for r in ids):
        engine.step()
    times = []
    for _ in range(steps):
        _sync(loaded.device)
        t0 = time.perf_counter()
        engine.step()
        _sync(loaded.device)
        times.append(time.perf_counter() - t0)
    timed = times[2:] if len(times) > 4 else times  # the first decode steps compile / warm up
    return {"batch": batch, "backend": engine.backend_name, "step_ms_median": 1e3 * statistics.median(timed),
            "decode_tok_s": batch * len(timed) / sum(timed), "context": prompt_len + steps}


def bandwidth_floor_ms(loaded, batch: int, context: int, copy_gbps: float) -> float:
    """Weights read once plus every request's K/V read once, over the measured copy bandwidth."""
    c = loaded.config
    elem = torch.tensor([], dtype=loaded.dtype).element_size()
    weights = sum(p.numel() for p in loaded.model.parameters()) * elem
    kv = batch * context * c.num_layers * 2 * c.num_kv_heads * c.head_dim * elem
    return (weights + kv) / (copy_gbps * 1e9) * 1e3


def cuda_graphs_supported() -> bool:
    from kvscope.config.recipe import Recipe

    try:
        Recipe.from_dict({"model": {"source": "random", "shape": "tiny"}, "cuda_graphs": True, "device": "cuda",
                          "attention_backend": "triton", "workload": {"prompts": ["-"]}})
    except Exception:
        return False
    return True


def cmd_throughput(args) -> dict:
    loaded = load(args.shape, args.dtype, args.device)
    graphs = cuda_graphs_supported() and args.device == "cuda"
    rows = []
    for batch in args.batches:
        for mode in [{"eager": "eager", "graphs": "cuda graphs"}[m] for m in args.modes]:
            if mode == "cuda graphs" and not graphs:
                why = "needs CUDA" if cuda_graphs_supported() else "not implemented (recipe has no cuda_graphs)"
                rows.append({"batch": batch, "mode": mode, "status": f"{why} (this run is on {args.device})"})
                continue
            extra = {"cuda_graphs": mode == "cuda graphs"} if graphs else None
            row = {"mode": mode, **decode_run(loaded, batch, args.prompt_len, args.steps, extra)}
            if args.copy_gbps:
                floor = bandwidth_floor_ms(loaded, batch, row["context"], args.copy_gbps)
                row["floor_ms"] = floor
                row["x_floor"] = row["step_ms_median"] / floor
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"shape": args.shape, "dtype": args.dtype, "device": args.device, "copy_gbps": args.copy_gbps,
            "rows": rows, "ok": True}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    eq = sub.add_parser("equality")
    eq.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama-1b"])
    eq.add_argument("--prompt-lens", type=int, nargs="+", default=[1, 5, 23, 40, 130])
    eq.add_argument("--max-tokens", type=int, default=16)
    tp = sub.add_parser("throughput")
    tp.add_argument("--shape", default="llama-1b")
    tp.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    tp.add_argument("--prompt-len", type=int, default=512)
    tp.add_argument("--steps", type=int, default=32)
    tp.add_argument("--modes", nargs="+", choices=["eager", "graphs"], default=["eager", "graphs"])
    tp.add_argument("--copy-gbps", type=float, default=0.0, help="measured copy bandwidth for the floor")
    for s in (eq, tp):
        s.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
        s.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        torch.set_num_threads(1)
    torch.manual_seed(0)
    result = cmd_equality(args) if args.cmd == "equality" else cmd_throughput(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
