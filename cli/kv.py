"""`kvscope kv MODEL`: one-shot KV-memory estimate (bytes per token, per request, per batch, what fits).

Pure python and fast (no torch). Text by default, `--json` for the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json

from kvscope.cli.errors import UsageError
from kvscope.cli.oneshot_args import add_device_arguments, add_model_argument, load_device, load_model
from kvscope.inspector.kv_estimate import DTYPE_BYTES, EstimateError, KVEstimate, estimate_kv
from kvscope.inspector.text_table import format_sections, human_bytes, human_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--context", type=int, default=None, metavar="TOKENS",
                        help="tokens per request (default: the model's maximum context)")
    parser.add_argument("--batch", "--requests", dest="batch", type=int, default=1, metavar="N",
                        help="concurrent requests (default 1)")
    parser.add_argument("--kv-dtype", default="fp16", metavar="DTYPE",
                        help=f"KV cache dtype: {', '.join(DTYPE_BYTES)} (default fp16)")
    parser.add_argument("--weights-dtype", default="fp16", metavar="DTYPE",
                        help=f"weights dtype: {', '.join(DTYPE_BYTES)} (default fp16)")
    parser.add_argument("--block-size", type=int, default=16, metavar="TOKENS", help="tokens per KV block (default 16)")
    add_device_arguments(parser)
    parser.add_argument("--gpus", type=int, default=1, metavar="N",
                        help="GPUs sharing weights and KV (tensor parallel; default 1)")
    parser.add_argument("--mem-util", type=float, default=0.9, metavar="FRACTION",
                        help="fraction of device memory the engine may use (default 0.9)")
    parser.add_argument("--max-len", type=int, default=None, metavar="TOKENS",
                        help="length a contiguous reservation holds per request (default: the model's max context)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def run(args: argparse.Namespace) -> int:
    shape = load_model(args.model)
    device = load_device(args)
    context = args.context if args.context is not None else shape.max_position_embeddings
    try:
        est = estimate_kv(shape, device, context=context, batch=args.batch, kv_dtype=args.kv_dtype,
                          weights_dtype=args.weights_dtype, block_size=args.block_size, mem_util=args.mem_util,
                          max_len=args.max_len, num_gpus=args.gpus)
    except EstimateError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(est.to_dict(), indent=2))
    else:
        print(render_estimate(est, shape.num_heads, shape.num_kv_heads))
    return 0


def _applies_note(est: KVEstimate, heads: int, kv_heads: int) -> str:
    ratio = est.mha_bytes_per_token / est.bytes_per_token
    if est.attention == "MLA":
        return f"MLA: one shared latent per layer instead of {heads} K/V heads -> {ratio:.1f}x smaller than MHA"
    if est.attention == "MHA":
        return f"MHA: {kv_heads} KV heads = {heads} query heads (the MHA figure is the real one)"
    return (f"{est.attention}: {kv_heads} KV head(s) serve {heads} query heads, {ratio:.1f}x below MHA: "
            f"{est.bytes_per_token:,} B applies")


def render_estimate(est: KVEstimate, heads: int, kv_heads: int) -> str:
    """The estimate as titled, aligned text sections."""
    title = (f"kvscope kv  {est.model}  ({est.attention}, {est.num_layers} layers)  KV {est.kv_dtype}  "
             f"weights {est.weights_dtype}  on {est.device}")
    per_token = [("bytes per token", f"{est.bytes_per_token:,} B", est.formula)]
    if est.attention != "MHA":
        per_token.append(("MHA-equivalent", f"{est.mha_bytes_per_token:,} B", est.mha_formula))
    per_token.append(("applies", "", _applies_note(est, heads, kv_heads)))
    if est.sliding_window:
        per_token.append(("sliding window", f"{est.sliding_window:,} tok",
                          f"{est.num_local_layers} of {est.num_layers} layers stop growing past the window"))
    blocks_req = f"{est.blocks_per_request:,.0f}" if est.blocks_per_request.is_integer() else \
        f"{est.blocks_per_request:,.2f}"
    request = [
        ("per request", human_bytes(est.request_bytes), f"{est.context:,} tokens"),
        ("per request, paged", human_bytes(est.request_paged_bytes),
         f"{blocks_req} blocks of {est.block_size} tokens ({human_bytes(est.block_bytes)} each)"),
        (f"batch of {est.batch:,}", human_bytes(est.batch_bytes),
         "fits" if est.batch_fits else "does NOT fit in the KV budget"),
    ]
    usable = est.device_bytes * est.mem_util
    gpus = f"{est.num_gpus} x {human_bytes(est.device_bytes // est.num_gpus)} " if est.num_gpus > 1 else ""
    memory = [
        ("device memory", human_bytes(est.device_bytes),
         f"{gpus}x {est.mem_util:g} utilisation = {human_bytes(usable)}"),
        ("weights", human_bytes(est.weights_bytes),
         f"{human_count(est.num_params)} params x {est.weights_dtype}"),
        ("KV budget", human_bytes(est.kv_budget_bytes),
         "weights do not fit: nothing left for KV" if est.kv_budget_bytes == 0 else "usable - weights"),
        ("KV blocks", f"{est.num_blocks:,}", f"{est.num_blocks * est.block_size:,} token slots"),
        ("concurrent requests", f"{est.max_requests:,}", f"at {est.context:,} tokens each (paged)"),
    ]
    frag = [
        ("at this context", f"{est.waste_fraction_at_context:.2%}",
         f"{est.waste_slots_at_context} empty slot(s) in the last block per request"),
        ("expected", f"{est.expected_waste_fraction:.2%}",
         f"lengths spread evenly: ({est.block_size} - 1) / 2 empty slots per request"),
    ]
    contiguous = [
        ("reserved per request", human_bytes(est.contiguous_request_bytes), f"max_len {est.max_len:,} tokens"),
        ("concurrent requests", f"{est.contiguous_max_requests:,}",
         f"vs {est.max_requests:,} paged"),
        ("wasted at this context", f"{est.contiguous_waste_fraction:.2%}", "of each reservation never written"),
    ]
    return title + "\n\n" + format_sections([
        ("KV per token", per_token),
        (f"Per request and batch (context {est.context:,})", request),
        (f"Memory on {est.num_gpus} x {est.device}" if est.num_gpus > 1 else f"Memory on {est.device}", memory),
        (f"Internal fragmentation (block size {est.block_size})", frag),
        ("Contiguous max-length reservation (no paging)", contiguous),
    ])
