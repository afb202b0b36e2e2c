"""`kvscope kv MODEL`: one-shot KV-memory estimate (bytes per token, per request, per batch, what fits).

Pure python and fast (no torch; rich only to print the answer). A rich table by default, `--json` for the
same numbers as JSON. A config.json without intermediate_size or vocab_size is enough for the KV figures;
what depends on the weights' size (the KV budget and what fits) is then "unknown" (null in JSON).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kvscope.cli.errors import UsageError
from kvscope.cli.oneshot_args import load_device, load_model
from kvscope.costmodel.kv_estimate import EstimateError, KVEstimate, estimate_kv
from kvscope.inspector.human_units import human_bytes, human_count

if TYPE_CHECKING:
    from rich.console import RenderableType


def run_kv(model: str, *, context: int | None = None, batch: int = 1, kv_dtype: str = "fp16",
           weights_dtype: str = "fp16", block_size: int = 16, gpu: str = "H100-80GB", gpu_mem: float | None = None,
           gpus: int = 1, mem_util: float = 0.9, max_len: int | None = None, as_json: bool = False) -> int:
    """Estimate and print; a bad model, device or size is a UsageError (one line, exit code 2)."""
    shape = load_model(model, need_weights=False)
    device = load_device(gpu, gpu_mem)
    context = context if context is not None else shape.max_position_embeddings
    try:
        est = estimate_kv(shape, device, context=context, batch=batch, kv_dtype=kv_dtype,
                          weights_dtype=weights_dtype, block_size=block_size, mem_util=mem_util,
                          max_len=max_len, num_gpus=gpus)
    except EstimateError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        print(json.dumps(est.to_dict(), indent=2))
    else:
        from kvscope.cli.console import emit

        missing = shape.missing_weights_fields
        emit(render_estimate(est, shape.num_heads, shape.num_kv_heads,
                             f"{model} gives no {' or '.join(missing)}" if missing else ""))
    return 0


UNKNOWN = "unknown"


def _count(value: int | None) -> str:
    return UNKNOWN if value is None else f"{value:,}"


def _bytes(value: int | None) -> str:
    return UNKNOWN if value is None else human_bytes(value)


def _fits_note(est: KVEstimate) -> str:
    if est.batch_fits is None:
        return "whether it fits needs the weights' size"
    return "fits" if est.batch_fits else "does NOT fit in the KV budget"


def _applies_note(est: KVEstimate, heads: int, kv_heads: int) -> str:
    ratio = est.mha_bytes_per_token / est.bytes_per_token
    if est.attention == "MLA":
        return f"MLA: one shared latent per layer instead of {heads} K/V heads -> {ratio:.1f}x smaller than MHA"
    if est.attention == "MHA":
        return f"MHA: {kv_heads} KV heads = {heads} query heads (the MHA figure is the real one)"
    return (f"{est.attention}: {kv_heads} KV head(s) serve {heads} query heads, {ratio:.1f}x below MHA: "
            f"{est.bytes_per_token:,} B applies")


def render_estimate(est: KVEstimate, heads: int, kv_heads: int, weights_unknown: str = "") -> RenderableType:
    """The estimate as titled sections of label / value / note rows; weights_unknown: why the weights' size is
    not known (when est.num_params is None)."""
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
        (f"batch of {est.batch:,}", human_bytes(est.batch_bytes), _fits_note(est)),
    ]
    usable = est.device_bytes * est.mem_util
    gpus = f"{est.num_gpus} x {human_bytes(est.device_bytes // est.num_gpus)} " if est.num_gpus > 1 else ""
    memory = [
        ("device memory", human_bytes(est.device_bytes),
         f"{gpus}x {est.mem_util:g} utilisation = {human_bytes(usable)}"),
        ("weights", _bytes(est.weights_bytes),
         weights_unknown if est.num_params is None else f"{human_count(est.num_params)} params x {est.weights_dtype}"),
        ("KV budget", _bytes(est.kv_budget_bytes),
         "weights do not fit: nothing left for KV" if est.kv_budget_bytes == 0 else "usable - weights"),
        ("KV blocks", _count(est.num_blocks),
         "" if est.num_blocks is None else f"{est.num_blocks * est.block_size:,} token slots"),
        ("concurrent requests", _count(est.max_requests), f"at {est.context:,} tokens each (paged)"),
    ]
    frag = [
        ("at this context", f"{est.waste_fraction_at_context:.2%}",
         f"{est.waste_slots_at_context} empty slot(s) in the last block per request"),
        ("expected", f"{est.expected_waste_fraction:.2%}",
         f"lengths spread evenly: ({est.block_size} - 1) / 2 empty slots per request"),
    ]
    contiguous = [
        ("reserved per request", human_bytes(est.contiguous_request_bytes), f"max_len {est.max_len:,} tokens"),
        ("concurrent requests", _count(est.contiguous_max_requests), f"vs {_count(est.max_requests)} paged"),
        ("wasted at this context", f"{est.contiguous_waste_fraction:.2%}", "of each reservation never written"),
    ]
    return sections_renderable(title, [
        ("KV per token", per_token),
        (f"Per request and batch (context {est.context:,})", request),
        (f"Memory on {est.num_gpus} x {est.device}" if est.num_gpus > 1 else f"Memory on {est.device}", memory),
        (f"Internal fragmentation (block size {est.block_size})", frag),
        ("Contiguous max-length reservation (no paging)", contiguous),
    ])


def sections_renderable(title: str, sections: list[tuple[str, list[tuple[str, str, str]]]]) -> RenderableType:
    """The title, then each section's heading over its (label, value, note) rows, labels and values lined
    up across all sections."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    from kvscope.cli.console import key_value_table

    label_w = max((len(label) for _, rows in sections for label, _, _ in rows), default=0)
    value_w = max((len(value) for _, rows in sections for _, value, _ in rows), default=0)
    parts: list[RenderableType] = [Text(title, style="bold")]
    for heading, rows in sections:
        table = key_value_table(label_w, value_w, notes=True)
        for label, value, note in rows:
            table.add_row(Text(label), Text(value), Text(note))
        parts += [Text(""), Text(heading, style="bold cyan"), Padding(table, (0, 0, 0, 2))]
    return Group(*parts)
