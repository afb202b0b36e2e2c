"""One decode-attention launch or one MLP forward for Nsight Compute, with the cost model's FLOPs and bytes.

    ncu --profile-from-start off ... python benchmarks/gpu_ncu_target.py --op attention
    python benchmarks/gpu_ncu_target.py --op mlp --cost-only     # only the cost model's numbers

Shapes: decode attention at batch 64 x 4096 context, 32 query / 4 KV heads, head dim 128, bf16, paged
(block 16), as benchmarks/kernels.py's acceptance case; the MLP of the Llama-3.2-1B shape
(benchmarks/gpu_engine.py's llama-1b) over 64 decode tokens, bf16. The op runs twice outside the profiled
range (Triton compiles, cuBLAS picks its kernels), then once between torch.cuda.profiler.start and stop
(cudaProfilerStart / Stop). The last line is `COST {"flops": ..., "bytes": ...}` from
kvscope.costmodel.roofline for the same shapes.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from gpu_engine import LLAMA_1B  # benchmarks/ is the script's folder, first on sys.path

from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.roofline import attention_cost, layer_token_costs

BATCH, CONTEXT, BLOCK = 64, 4096, 16
ATTN = ModelConfig("decode-case", num_layers=1, hidden_size=4096, num_heads=32, num_kv_heads=4, head_dim=128,
                   intermediate_size=1, vocab_size=1)
MLP_SHAPE = ModelConfig(**LLAMA_1B)


def cost(op: str) -> dict:
    if op == "attention":
        c = attention_cost(ATTN, [1] * BATCH, [CONTEXT] * BATCH, act_bytes=2, kv_bytes=2)
    else:
        c = layer_token_costs(MLP_SHAPE, BATCH, weight_bytes=2, act_bytes=2, kv_bytes=2)["mlp"]
    return {"flops": c.flops, "bytes": c.bytes}


def make_op(op: str, device: torch.device):
    dt = torch.bfloat16
    if op == "attention":
        from kvscope.kernels.triton.attention_triton import paged_attention_triton

        per_seq = CONTEXT // BLOCK
        k = torch.randn(BATCH * per_seq, BLOCK, ATTN.num_kv_heads, ATTN.head_dim, dtype=dt, device=device)
        v = torch.randn_like(k)
        tables = torch.randperm(BATCH * per_seq, device=device).view(BATCH, per_seq).int()
        q = torch.randn(BATCH, ATTN.num_heads, ATTN.head_dim, dtype=dt, device=device)
        qsl = torch.arange(BATCH + 1, device=device, dtype=torch.int32)
        lens = torch.full((BATCH,), CONTEXT, dtype=torch.int32, device=device)
        out = torch.empty_like(q)
        return lambda: paged_attention_triton(q, k, v, tables, qsl, lens, ATTN.head_dim**-0.5, max_query_len=1,
                                              max_seq_len=CONTEXT, out=out)
    from kvscope.engine.model.llama import MLP

    mlp = MLP(MLP_SHAPE.hidden_size, MLP_SHAPE.intermediate_size)
    for p in mlp.parameters():
        p.data = torch.randn(p.shape) / p.shape[-1] ** 0.5
    mlp = mlp.to(device=device, dtype=dt)
    x = torch.randn(BATCH, MLP_SHAPE.hidden_size, dtype=dt, device=device)
    return lambda: mlp(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=["attention", "mlp"], required=True)
    p.add_argument("--cost-only", action="store_true")
    args = p.parse_args(argv)
    if not args.cost_only:
        device = torch.device("cuda")
        fn = make_op(args.op, device)
        with torch.no_grad():
            fn(), fn()
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
            fn()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
    print("COST " + json.dumps(cost(args.op)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
