"""Speculative decoding on SmolLM2: the same requests with speculation off and on, in one run.

Two workloads of chat requests (greedy, EOS ends them, so every configuration produces the same tokens):
"copy" asks the model to repeat, quote or correct text it was given (prompt lookup's case), "chat" asks
ordinary questions. Each runs at batch 1 (one request at a time) and with 8 concurrent requests (both
workloads' requests together). Configurations: off, prompt lookup (k 4), adaptive prompt lookup (k from 2),
layerskip at two depths (k 3). Printed per row: output tokens/s, the ratio to off in the same run, steps,
the mean acceptance length (tokens per verification) and what the measured acceptance rate predicts
for independent acceptance, (1 - a^(k+1)) / (1 - a).

Goals (issue 13): prompt lookup at least 1.5x off at batch 1 on "copy"; adaptive prompt lookup on "chat"
no slower than off by more than 5%.

    .venv/bin/python benchmarks/speculative.py [--max-tokens 96] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import LoadedModel, load_for_recipe
from kvscope.inspector.spec_metrics import SpecDecodeStats

COPY = [
    "Repeat the following text exactly, word for word:\n\nThe Industrial Revolution began in Great Britain in the "
    "late eighteenth century and spread to Europe and North America. It brought new machines, new sources of "
    "power and new ways of organising work in factories.",
    "Fix the spelling mistakes in this paragraph and return the corrected paragraph only:\n\nThe quik brown fox "
    "jumpd over the lazzy dog. It was a sunny day and the fox was very hapy to be outside in the feilds with his "
    "freinds.",
    "Quote the second sentence of this text exactly:\n\nPaged attention stores the KV cache in fixed-size blocks. "
    "A block table maps each request's logical blocks to physical ones, so memory is allocated on demand and "
    "shared prefixes can be reused.",
    "Rewrite this list in the same order, one item per line, keeping the words exactly:\napples, bread, milk, "
    "eggs, butter, cheese, tomatoes, onions, rice, coffee",
]
CHAT = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain in two sentences what a hash table is.",
    "Write a haiku about autumn.",
]
CONFIGS = {
    "off": None,
    "ngram k4": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4},
    "ngram adaptive": {"method": "ngram", "num_speculative_tokens": 2, "adaptive": True, "prompt_lookup_min": 2,
                       "prompt_lookup_max": 4},
    "layerskip 8": {"method": "layerskip", "num_layers": 8, "num_speculative_tokens": 3},
    "layerskip 16": {"method": "layerskip", "num_layers": 16, "num_speculative_tokens": 3},
}
MODEL = {"source": "gguf", "path": "smollm2"}


def recipe(spec: dict | None, max_num_seqs: int) -> Recipe:
    data = {"model": MODEL, "dtype": "float32", "device": "cpu", "attention_backend": "torch",
            "cache": {"block_size": 16, "num_blocks": 512},
            "scheduler": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": 1024, "max_model_len": 1024},
            "workload": {"prompts": ["-"]}}
    if spec is not None:
        data["speculative"] = spec
    return Recipe.from_dict(data)


def run(loaded: LoadedModel, spec: dict | None, prompts: list[list[int]], concurrent: int,
        max_tokens: int) -> tuple[float, int, int, list[list[int]], SpecDecodeStats]:
    """(seconds, output tokens, steps, outputs, acceptance statistics); no per-op timing (kernel events off)."""
    engine = LLMEngine(recipe(spec, concurrent), loaded=loaded, kernel_events=False)
    stats = SpecDecodeStats()
    engine.bus.subscribe(stats)
    params = SamplingParams(max_tokens=max_tokens)
    outputs: dict[int, list[int]] = {}
    t0 = time.perf_counter()
    for start in range(0, len(prompts), concurrent):
        ids = [engine.add_request(p, params) for p in prompts[start:start + concurrent]]
        while engine.has_unfinished():
            engine.step()
        outputs.update({i: engine.output(i).token_ids for i in ids})
    seconds = time.perf_counter() - t0
    tokens = [outputs[i] for i in sorted(outputs)]
    return seconds, sum(map(len, tokens)), engine.step_id, tokens, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2, help="best of N wall times per row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_for_recipe(recipe(None, 1))
    tok = loaded.tokenizer

    def encode(texts: list[str]) -> list[list[int]]:
        return [tok.encode(tok.apply_chat_template([{"role": "user", "content": t}]), add_bos=False) for t in texts]

    workloads = [("copy", encode(COPY), 1), ("chat", encode(CHAT), 1), ("copy+chat", encode(COPY + CHAT), 8)]
    print(f"SmolLM2-135M float32, {args.threads} threads, greedy, max_tokens {args.max_tokens}, best of "
          f"{args.repeats}")
    header = f"{'workload':<10} {'batch':>5} {'config':<15} {'tok/s':>7} {'vs off':>7} {'steps':>6} " \
             f"{'accept':>7} {'len':>5} {'pred':>5}"
    print(header)
    print("-" * len(header))
    for name, prompts, concurrent in workloads:
        base_tps = None
        reference = None
        for config in args.configs:
            spec = CONFIGS[config]
            best = None
            for _ in range(args.repeats):
                result = run(loaded, spec, prompts, concurrent, args.max_tokens)
                if best is None or result[0] < best[0]:
                    best = result
            seconds, tokens, steps, outputs, stats = best
            if reference is None:
                reference = outputs
            assert outputs == reference, f"{config}: outputs differ from off"
            tps = tokens / seconds
            base_tps = base_tps or tps
            s = stats.summary()
            acc = f"{s.acceptance_rate:7.1%}" if s else f"{'-':>7}"
            length = f"{s.mean_acceptance_length:5.2f}" if s else f"{'-':>5}"
            pred = f"{s.predicted_acceptance_length:5.2f}" if s else f"{'-':>5}"
            print(f"{name:<10} {concurrent:>5} {config:<15} {tps:7.1f} {tps / base_tps:6.2f}x {steps:>6} "
                  f"{acc} {length} {pred}", flush=True)
        print()


if __name__ == "__main__":
    main()
