"""Time the Triton paged-attention kernels on CUDA against torch baselines and the device's own limits.

Decode (one query token per request, GQA, paged K/V): our split-KV kernel, a
torch baseline (gather the pages, then scaled_dot_product_attention) and
torch.nn.attention.flex_attention over the already-gathered K/V (where it
compiles), for every batch x context; achieved GB/s = bytes of K/V and Q read
plus output written, over the median time (triton.testing.do_bench), against
the device-to-device copy bandwidth measured in the same run.

Prefill (causal, whole prompts, paged K/V): our varlen kernel and gather +
SDPA(is_causal), in TFLOP/s of useful causal FLOPs against a bf16 matmul
measured in the same run.

    python benchmarks/kernels.py                    # the full grid, bf16, GQA 32:4, head dim 128
    python benchmarks/kernels.py --batches 64 --contexts 4096 --json out.json
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke   # tiny CPU run of the same code path

Without a GPU (and without --smoke) it exits with a one-line message, code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

Timer = Callable[[Callable[[], object]], float]  # returns median milliseconds


@dataclass(slots=True)
class Row:
    kind: str            # decode | prefill
    impl: str            # triton | gather+sdpa | flex (dense)
    batch: int
    context: int
    ms: float
    gbps: float
    tflops: float
    note: str = ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 4096, 32768])
    p.add_argument("--prefill", type=str, nargs="+", default=["1x4096", "4x2048", "16x512"],
                   help="prefill cases as BATCHxPROMPT_LEN")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument("--no-flex", action="store_true", help="skip flex_attention (its compile takes a while)")
    p.add_argument("--mem-fraction", type=float, default=0.85,
                   help="skip cases whose K/V pool plus the baselines' gathered copies exceed this fraction "
                        "of free memory")
    p.add_argument("--json", metavar="PATH", help="also write the rows and the device limits as JSON")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes and a wall-clock timer: checks the code path on CPU under TRITON_INTERPRET=1")
    args = p.parse_args(argv)
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    try:
        args.prefill_cases = [tuple(int(x) for x in c.lower().split("x")) for c in args.prefill]
        assert all(len(c) == 2 and min(c) > 0 for c in args.prefill_cases)
    except (ValueError, AssertionError):
        p.error(f"--prefill expects BATCHxLEN items such as 4x2048, got {args.prefill}")
    return args


# ------------------------------------------------------------------ timers and device limits


def cuda_timer(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def wall_timer(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbps(timer: Timer, device: torch.device, nbytes: int) -> float:
    """Device-to-device copy: bytes read + bytes written over the median time."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(timer: Timer, device: torch.device, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timer(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3) / 1e12


# ------------------------------------------------------------------ paged inputs


@dataclass(slots=True)
class PagedCase:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    q_len: int
    context: int


def make_case(batch: int, q_len: int, context: int, args: argparse.Namespace, dtype: torch.dtype,
              device: torch.device) -> PagedCase:
    """`batch` requests of `context` tokens each (the last q_len of them are the queries), shuffled pages."""
    bs = args.block_size
    per_seq = -(-context // bs)
    num_blocks = batch * per_seq
    k_cache = torch.randn(num_blocks, bs, args.kv_heads, args.head_dim, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    block_tables = torch.randperm(num_blocks, device=device).view(batch, per_seq).int()
    q = torch.randn(batch * q_len, args.heads, args.head_dim, dtype=dtype, device=device)
    qsl = torch.arange(0, batch + 1, device=device, dtype=torch.int32) * q_len
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    return PagedCase(q, k_cache, v_cache, block_tables, qsl, seq_lens, q_len, context)


def gather_dense(case: PagedCase) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, KVH, L, D] K and V gathered from the pages (what the torch baseline pays for)."""
    k = case.k_cache[case.block_tables.long()].flatten(1, 2)[:, : case.context]
    v = case.v_cache[case.block_tables.long()].flatten(1, 2)[:, : case.context]
    return k.transpose(1, 2), v.transpose(1, 2)


def gather_sdpa(case: PagedCase, scale: float, causal: bool) -> torch.Tensor:
    batch = case.seq_lens.shape[0]
    k, v = gather_dense(case)
    q = case.q.view(batch, case.q_len, -1, case.q.shape[-1]).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=causal and case.q_len > 1,
                                          enable_gqa=True)


def make_flex(case: PagedCase, scale: float) -> Callable[[], torch.Tensor] | str:
    """flex_attention over the pre-gathered dense K/V, or the reason it is unavailable."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as e:  # pragma: no cover - depends on the torch build
        return f"unavailable ({e})"
    batch = case.seq_lens.shape[0]
    k, v = (t.contiguous() for t in gather_dense(case))
    q = case.q.view(batch, 1, -1, case.q.shape[-1]).transpose(1, 2).contiguous()
    compiled = torch.compile(flex_attention, dynamic=False)
    call = lambda: compiled(q, k, v, scale=scale, enable_gqa=True)
    try:
        call()
    except Exception as e:
        return f"failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    return call


# ------------------------------------------------------------------ benchmarks


def bench_decode(args, timer: Timer, dtype, device, free_bytes: int, rows: list[Row], flex_ok: bool) -> None:
    from kvscope.kernels.triton.attention_triton import attention_flops_and_bytes, paged_attention_triton

    elem = torch.tensor([], dtype=dtype).element_size()
    scale = args.head_dim**-0.5
    for context in args.contexts:
        for batch in args.batches:
            kv_bytes = 2 * batch * context * args.kv_heads * args.head_dim * elem
            budget = args.mem_fraction * free_bytes
            if 3 * kv_bytes > budget:  # pool + gathered K/V + SDPA's contiguous copy
                print(f"  decode B={batch} L={context}: skipped ({3 * kv_bytes / 2**30:.1f} GiB needed)")
                continue
            case = make_case(batch, 1, context, args, dtype, device)
            flops, nbytes = attention_flops_and_bytes([1] * batch, [context] * batch, args.heads,
                                                      args.kv_heads, args.head_dim, elem)
            out = torch.empty_like(case.q)
            ours = lambda case=case, out=out, context=context: paged_attention_triton(
                case.q, case.k_cache, case.v_cache, case.block_tables, case.query_start_loc, case.seq_lens,
                scale, max_query_len=1, max_seq_len=context, out=out)
            torch.testing.assert_close(ours().float(), gather_sdpa(case, scale, False).transpose(1, 2)
                                       .reshape_as(out).float(), rtol=2e-2, atol=2e-2)
            impls: list[tuple[str, Callable[[], object] | str]] = [
                ("triton", ours), ("gather+sdpa", lambda case=case: gather_sdpa(case, scale, False))]
            if flex_ok and 4 * kv_bytes <= budget:  # flex keeps its own dense copy alive
                impls.append(("flex (dense)", make_flex(case, scale)))
            elif flex_ok:
                impls.append(("flex (dense)", "skipped (memory)"))
            for name, fn in impls:
                if isinstance(fn, str):
                    rows.append(Row("decode", name, batch, context, float("nan"), float("nan"), float("nan"), fn))
                    continue
                ms = timer(fn)
                rows.append(Row("decode", name, batch, context, ms, nbytes / (ms * 1e-3) / 1e9,
                                flops / (ms * 1e-3) / 1e12))
            del case, out, impls, ours
            if device.type == "cuda":
                torch.cuda.empty_cache()


def bench_prefill(args, timer: Timer, dtype, device, free_bytes: int, rows: list[Row]) -> None:
    from kvscope.kernels.triton.attention_triton import attention_flops_and_bytes, paged_attention_triton

    elem = torch.tensor([], dtype=dtype).element_size()
    scale = args.head_dim**-0.5
    for batch, length in args.prefill_cases:
        kv_bytes = 2 * batch * length * args.kv_heads * args.head_dim * elem
        if 4 * kv_bytes > args.mem_fraction * free_bytes:
            print(f"  prefill {batch}x{length}: skipped")
            continue
        case = make_case(batch, length, length, args, dtype, device)
        flops, nbytes = attention_flops_and_bytes([length] * batch, [length] * batch, args.heads,
                                                  args.kv_heads, args.head_dim, elem)
        out = torch.empty_like(case.q)
        ours = lambda case=case, out=out, length=length: paged_attention_triton(
            case.q, case.k_cache, case.v_cache, case.block_tables, case.query_start_loc, case.seq_lens,
            scale, max_query_len=length, max_seq_len=length, out=out)
        want = gather_sdpa(case, scale, True).transpose(1, 2).reshape_as(out)
        torch.testing.assert_close(ours().float(), want.float(), rtol=2e-2, atol=2e-2)
        for name, fn in (("triton", ours), ("gather+sdpa", lambda case=case: gather_sdpa(case, scale, True))):
            ms = timer(fn)
            rows.append(Row("prefill", name, batch, length, ms, nbytes / (ms * 1e-3) / 1e9,
                            flops / (ms * 1e-3) / 1e12))
        del case, out


# ------------------------------------------------------------------ report


def report(rows: list[Row], copy_gbps: float, mm_tflops: float, args) -> list[str]:
    lines = [f"device limits: copy {copy_gbps:,.0f} GB/s, {args.matmul_dtype} matmul {mm_tflops:,.1f} TFLOP/s",
             f"{'kind':8} {'impl':13} {'B':>4} {'L':>6} {'ms':>9} {'GB/s':>8} {'%copy':>6} {'TFLOP/s':>8} {'%mm':>5}"]
    for r in rows:
        if r.note:
            lines.append(f"{r.kind:8} {r.impl:13} {r.batch:4d} {r.context:6d}  {r.note}")
            continue
        lines.append(f"{r.kind:8} {r.impl:13} {r.batch:4d} {r.context:6d} {r.ms:9.4f} {r.gbps:8.0f} "
                     f"{100 * r.gbps / copy_gbps:5.0f}% {r.tflops:8.1f} {100 * r.tflops / mm_tflops:4.0f}%")

    def find(kind, impl, batch, context):
        return next((r for r in rows if (r.kind, r.impl, r.batch, r.context) == (kind, impl, batch, context)
                     and not r.note), None)

    ours, base = find("decode", "triton", 64, 4096), find("decode", "gather+sdpa", 64, 4096)
    if ours and base:
        frac, speedup = ours.gbps / copy_gbps, base.ms / ours.ms
        lines.append(f"goal decode 64x4096: {100 * frac:.0f}% of copy bandwidth (goal >= 80%: "
                     f"{'met' if frac >= 0.8 else 'missed'}), {speedup:.1f}x gather+sdpa (goal >= 3x: "
                     f"{'met' if speedup >= 3 else 'missed'})")
    for r in rows:
        if r.kind == "prefill" and r.impl == "triton" and not r.note:
            b = find("prefill", "gather+sdpa", r.batch, r.context)
            vs = f", {b.ms / r.ms:.2f}x gather+sdpa" if b else ""
            lines.append(f"prefill {r.batch}x{r.context}: {100 * r.tflops / mm_tflops:.0f}% of matmul{vs}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.smoke:
        print("benchmarks/kernels.py: error: needs a CUDA GPU and none is visible "
              "(use --smoke with TRITON_INTERPRET=1 to check the code path on CPU)", file=sys.stderr)
        return 2
    if not has_cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before kvscope.kernels.triton.attention_triton imports triton
    if args.smoke:
        args.batches, args.contexts, args.prefill_cases = [1, 3], [40], [(2, 8)]
        if not has_cuda:
            args.heads, args.kv_heads, args.head_dim, args.no_flex = 8, 1, 16, True
            args.dtype = "float16"
    device = torch.device("cuda" if has_cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    timer: Timer = cuda_timer if has_cuda else wall_timer
    torch.manual_seed(0)
    free_bytes = torch.cuda.mem_get_info()[0] if has_cuda else 8 * 2**30

    copy_gbps = copy_bandwidth_gbps(timer, device, 2**30 if has_cuda and not args.smoke else 2**22)
    mm_dtype = dtype if has_cuda else torch.float32  # CPU half matmuls are emulated
    args.matmul_dtype = str(mm_dtype).removeprefix("torch.")
    mm_tflops = matmul_tflops(timer, device, 8192 if has_cuda and not args.smoke else 128, mm_dtype)
    name = torch.cuda.get_device_name() if has_cuda else "cpu (interpreter smoke run; numbers are meaningless)"
    print(f"{name}: heads {args.heads}/{args.kv_heads}, head dim {args.head_dim}, block {args.block_size}, "
          f"{args.dtype}")
    rows: list[Row] = []
    bench_decode(args, timer, dtype, device, free_bytes, rows, flex_ok=not args.no_flex)
    bench_prefill(args, timer, dtype, device, free_bytes, rows)
    lines = report(rows, copy_gbps, mm_tflops, args)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "copy_gbps": copy_gbps, "matmul_tflops": mm_tflops,
                       "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
