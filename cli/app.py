"""The `kvscope` command's surface: one typed function per subcommand (typer), with its options, help and
examples. Each function only hands its arguments to the module that does the work, imported when the
command runs, so `kvscope kv` never imports what `kvscope run` needs (torch, the engine, textual).

Shell completion comes with typer: `kvscope --install-completion` (bash, zsh, fish, PowerShell).
kvscope.cli.main runs this app and turns every error into one line and exit code 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from kvscope.version import __version__

if TYPE_CHECKING:
    from typer._click import Context  # the click that typer vendors (and passes): not the `click` package

RECIPE_HELP = "recipe YAML (see recipes/)"
MODEL_HELP = ("a preset (llama-2-7b, llama-3.1-8b, mistral-7b, qwen2.5-7b, gemma-2-9b, deepseek-v3, smollm2-135m, "
              "...), a Hugging Face config.json or folder, a .gguf file or a recipe .yaml")
GPU_HELP = ("device preset: H100-80GB, H100-PCIe, H200, A100-80GB, A100-40GB, L4, L40S, RTX-4090, B200, MI300X, "
            "cpu")

app = typer.Typer(
    name="kvscope",
    help="See what an LLM inference engine does with memory and time: a live TUI, Perfetto / Nsight "
         "timelines and one-shot answers about KV memory and rooflines.",
    epilog="Bad input ends in one line on stderr, `kvscope: error: ...`, and exit code 2.",
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Recipe = Annotated[str, typer.Argument(metavar="RECIPE", help=RECIPE_HELP, show_default=False)]
Model = Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
Gpu = Annotated[str, typer.Option("--gpu", metavar="NAME", help=GPU_HELP)]
GpuMem = Annotated[float | None, typer.Option("--gpu-mem", metavar="GIB",
                                              help="device memory in GiB (overrides the preset's size)")]
NoNvtx = Annotated[bool, typer.Option("--no-nvtx", help="no live NVTX ranges (domain 'kvscope', on by default: "
                                                        "`nsys profile kvscope run ...`)")]
ClientApiKey = Annotated[str | None, typer.Option(
    "--api-key", metavar="KEY", envvar="OPENAI_API_KEY", show_envvar=True,
    help="the key of a server started with --api-key (sent as `Authorization: Bearer KEY`)")]


def _examples(*lines: str) -> str:
    return "[bold]Examples[/bold]\n\n" + "\n".join(f"  [cyan]{line}[/cyan]" for line in lines)


@app.callback(invoke_without_command=True)
def kvscope(ctx: typer.Context,
            version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False) -> None:
    if version:
        typer.echo(f"kvscope {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


@app.command(epilog=_examples(
    "kvscope run recipes/quickstart.yaml",
    "kvscope run recipes/quickstart.yaml --headless",
    "kvscope run recipes/preemption.yaml --headless --json",
    "kvscope run recipes/quickstart.yaml --record run.jsonl",
))
def run(
    recipe: Recipe,
    headless: Annotated[bool, typer.Option("--headless", help="no TUI: run to the end and print a summary")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the summary as one JSON object (implies --headless)")]
    = False,
    record: Annotated[str | None, typer.Option("--record", metavar="FILE",
                                               help="write every event to FILE (JSONL) while running")] = None,
    no_nvtx: NoNvtx = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", metavar="N", help="torch intra-op threads on a CPU (default: every core headless; all but "
                                       "one under the TUI, which needs a core of its own)")] = None,
    show_outputs: Annotated[bool | None, typer.Option(
        "--show-outputs/--no-show-outputs", show_default=False,
        help="print each request's generated text (default: on for prompt/chat workloads)")] = None,
) -> int:
    """Run a recipe: the live TUI, or with --headless (or no terminal) a run and its summary."""
    from kvscope.cli.commands.run import run_recipe

    return run_recipe(recipe, headless=headless, as_json=as_json, record=record, nvtx=not no_nvtx, threads=threads,
                      show_outputs=show_outputs)


@app.command(epilog=_examples(
    "kvscope trace recipes/quickstart.yaml -o out/",
    "kvscope trace recipes/quickstart.yaml -o out/ --torch-profiler",
    "ImportNvtxt --cmd create -n out/trace.nvtxt -o out/trace.nsys-rep",
    "kvscope trace --attach http://127.0.0.1:8000 --seconds 5 -o live/",
))
def trace(
    recipe: Annotated[str | None, typer.Argument(metavar="RECIPE", help=RECIPE_HELP + " (or --attach URL)",
                                                 show_default=False)] = None,
    out: Annotated[str | None, typer.Option("-o", "--out", metavar="DIR",
                                            help="output folder (default: trace-<recipe name>)")] = None,
    torch_profiler: Annotated[bool, typer.Option(
        "--torch-profiler", help="also merge torch.profiler's CPU ops / CUDA kernels into trace.json")] = False,
    no_nvtx: NoNvtx = False,
    no_kernels: Annotated[bool, typer.Option("--no-kernels", help="leave out per-op kernel events (smaller files)")]
    = False,
    attach: Annotated[str | None, typer.Option("--attach", metavar="URL",
                                               help="record a running `kvscope serve` instead of a recipe")] = None,
    seconds: Annotated[float, typer.Option("--seconds", metavar="S", help="with --attach: how long to record")]
    = 10.0,
    api_key: ClientApiKey = None,
) -> int:
    """Run a recipe (or watch a live server with --attach) and write its timelines: trace.json (Perfetto,
    speedscope), trace.nvtxt (Nsight Systems), events.jsonl (kvscope replay)."""
    if (recipe is None) == (attach is None):
        from kvscope.cli.errors import UsageError

        raise UsageError("trace: give a RECIPE or --attach URL (one of them)")
    if attach is not None:
        from kvscope.cli.commands.attach import run_trace_attach

        if torch_profiler:
            from kvscope.cli.errors import UsageError

            raise UsageError("--torch-profiler: cannot profile a remote server (--attach)")

        return run_trace_attach(attach, out=out, seconds=seconds, kernels=not no_kernels, api_key=api_key)
    assert recipe is not None
    from kvscope.cli.commands.trace import run_trace

    return run_trace(recipe, out=out, torch_profiler=torch_profiler, nvtx=not no_nvtx, kernels=not no_kernels)


@app.command(epilog=_examples(
    "kvscope replay out/events.jsonl",
    "kvscope replay out/events.jsonl --strict",
))
def replay(
    events: Annotated[str, typer.Argument(metavar="EVENTS.jsonl", show_default=False,
                                          help="a recording from `kvscope run --record` or `kvscope trace`")],
    strict: Annotated[bool, typer.Option("--strict", help="fail on the first corrupt line instead of replaying "
                                                          "up to it")] = False,
) -> int:
    """Open the TUI over a recording: step back and forward, jump to step N."""
    from kvscope.cli.commands.replay import run_replay_command

    return run_replay_command(events, strict=strict)


@app.command(epilog=_examples(
    "kvscope kv llama-2-7b --context 4096",
    "kvscope kv llama-2-70b --context 8192 --batch 32 --gpu H200 --gpus 2 --kv-dtype fp8",
    "kvscope kv path/to/config.json --gpu-mem 24 --json",
))
def kv(
    model: Model,
    context: Annotated[int | None, typer.Option("--context", metavar="TOKENS",
                                                help="tokens per request (default: the model's maximum context)")]
    = None,
    batch: Annotated[int, typer.Option("--batch", "--requests", metavar="N", help="concurrent requests")] = 1,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", metavar="DTYPE",
                                          help="KV cache dtype: fp32, fp16, bf16, fp8, int8, ...")] = "fp16",
    weights_dtype: Annotated[str, typer.Option("--weights-dtype", metavar="DTYPE", help="weights dtype")] = "fp16",
    block_size: Annotated[int, typer.Option("--block-size", metavar="TOKENS", help="tokens per KV block")] = 16,
    gpu: Gpu = "H100-80GB",
    gpu_mem: GpuMem = None,
    gpus: Annotated[int, typer.Option("--gpus", metavar="N",
                                      help="GPUs sharing weights and KV (tensor parallel)")] = 1,
    mem_util: Annotated[float, typer.Option("--mem-util", metavar="FRACTION",
                                            help="fraction of device memory the engine may use")] = 0.9,
    max_len: Annotated[int | None, typer.Option(
        "--max-len", metavar="TOKENS",
        help="length a contiguous reservation holds per request (default: the model's max context)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the estimate as JSON")] = False,
) -> int:
    """One-shot KV-cache memory estimate: bytes per token, per request and batch, what fits on the GPU."""
    from kvscope.cli.commands.kv import run_kv

    return run_kv(model, context=context, batch=batch, kv_dtype=kv_dtype, weights_dtype=weights_dtype,
                  block_size=block_size, gpu=gpu, gpu_mem=gpu_mem, gpus=gpus, mem_util=mem_util, max_len=max_len,
                  as_json=as_json)


@app.command(epilog=_examples(
    "kvscope roofline llama-3.1-8b --gpu H100-80GB --phase decode --batch 16 --context 4096",
    "kvscope roofline deepseek-v3 --gpu H200 --phase prefill --context 2048 --dtype fp8",
))
def roofline(
    model: Model,
    gpu: Gpu = "H100-80GB",
    gpu_mem: GpuMem = None,
    phase: Annotated[str, typer.Option("--phase", metavar="PHASE",
                                       help="decode: one new token per request at --context; prefill: a "
                                            "--context-token prompt per request")] = "decode",
    batch: Annotated[int, typer.Option("--batch", metavar="N", help="requests in the step")] = 1,
    context: Annotated[int, typer.Option("--context", metavar="TOKENS", help="tokens of context per request")]
    = 4096,
    dtype: Annotated[str, typer.Option("--dtype", metavar="DTYPE", help="weights / matmul dtype")] = "bf16",
    kv_dtype: Annotated[str | None, typer.Option("--kv-dtype", metavar="DTYPE",
                                                 help="KV cache dtype (default: --dtype)")] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="skip the terminal roofline plot")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the analysis as JSON")] = False,
) -> int:
    """One-shot roofline: per-operator FLOPs, bytes, intensity and bound for a step on a GPU."""
    from kvscope.cli.commands.roofline import run_roofline

    return run_roofline(model, gpu=gpu, gpu_mem=gpu_mem, phase=phase, batch=batch, context=context, dtype=dtype,
                        kv_dtype=kv_dtype, plot=not no_plot, as_json=as_json)


class _RecipeOrSubcommand(TyperGroup):
    """`kvscope bench`: `kvscope bench serve ...` is the load generator; anything else that is not an option
    (`kvscope bench RECIPE.yaml ...`, or nothing) means `kvscope bench recipe RECIPE.yaml ...`. `--goodput`
    takes its SLOs as `vllm bench serve` does (`--goodput ttft:300 tpot:50`, one option, several values)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if not args or (not args[0].startswith("-") and args[0] not in self.commands):
            args = ["recipe", *args]  # no arguments at all: the recipe command's "Missing argument 'RECIPE'"
        if args and args[0] == "serve":
            args = _split_nargs(args, "--goodput")
        return super().parse_args(ctx, args)


def _split_nargs(args: list[str], option: str) -> list[str]:
    """`OPTION a b c` -> `OPTION a OPTION b OPTION c` (an option that takes several values, argparse's nargs='+')."""
    out: list[str] = []
    i = 0
    while i < len(args):
        out.append(args[i])
        if args[i] == option:
            i += 1
            first = True
            while i < len(args) and not args[i].startswith("-"):
                if not first:
                    out.append(option)
                out.append(args[i])
                first = False
                i += 1
            continue
        i += 1
    return out


bench_app = typer.Typer(
    cls=_RecipeOrSubcommand, no_args_is_help=False,
    help="Benchmarks: `kvscope bench RECIPE.yaml` compares a recipe's variants offline; `kvscope bench serve` "
         "loads a running server the way `vllm bench serve` does.")
app.add_typer(bench_app, name="bench")


@bench_app.command("recipe", epilog=_examples(
    "kvscope bench recipes/prefix-cache.yaml",
    "kvscope bench recipes/static-vs-continuous.yaml --json out.json --chart out.svg",
    "kvscope bench recipes/preemption.yaml --model-override tiny --max-requests 8",
    "kvscope bench recipes/sim-llama70b-h100.yaml --max-rate --slo ttft_p90:2000 --slo tbt_p99:200",
))
def bench_recipe(
    recipe: Recipe,
    json_out: Annotated[str | None, typer.Option("--json", metavar="FILE",
                                                 help="also write the comparison as JSON to FILE ('-' = stdout)")]
    = None,
    chart: Annotated[str | None, typer.Option(
        "--chart", metavar="FILE.svg", help="also draw the comparison, and each variant's batch timeline, as SVG")]
    = None,
    model_override: Annotated[str | None, typer.Option(
        "--model-override", metavar="NAME",
        help="run every variant on another model: a random-weight preset (tiny, tiny-gqa3, smollm2-135m-random, "
             "llama-2-7b, ...) or smollm2 (the real GGUF); a layerskip draft depth is cut to its layers - 1")] = None,
    max_requests: Annotated[int | None, typer.Option(
        "--max-requests", metavar="N", help="keep only the first N requests of the workload (quick checks)")]
    = None,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", metavar="NAME", help="run only this variant (repeatable; default: all)")] = None,
    max_rate: Annotated[bool, typer.Option(
        "--max-rate", help="capacity search (device: sim): per variant, the highest request rate meeting the SLOs")]
    = False,
    slo: Annotated[list[str] | None, typer.Option(
        "--slo", metavar="METRIC_pNN:MS", help="with --max-rate: a latency SLO, e.g. ttft_p90:2000 or tbt_p99:200 "
                                              "(repeatable; default: both of those)")] = None,
    start_rate: Annotated[float, typer.Option(
        "--start-rate", metavar="REQ/S", help="with --max-rate: the first rate tried")] = 1.0,
) -> int:
    """Run a recipe's variants on the same workload and compare them in one table (`kvscope bench RECIPE.yaml`
    is short for `kvscope bench recipe RECIPE.yaml`)."""
    if max_rate:
        from kvscope.cli.commands.capacity import run_capacity

        return run_capacity(recipe, slo, json_out=json_out, chart=chart, max_requests=max_requests,
                            variants=variant, start_rate=start_rate)
    if slo:
        from kvscope.cli.errors import UsageError

        raise UsageError("--slo: only a capacity search reads SLOs (add --max-rate)")
    from kvscope.cli.commands.bench import run_bench

    return run_bench(recipe, json_out=json_out, chart=chart, model=model_override, max_requests=max_requests,
                     variants=variant)


@app.command(epilog=_examples(
    "kvscope calibrate -o profile.json",
    "kvscope calibrate --device cuda -o h100.json",
))
def calibrate(
    out: Annotated[str, typer.Option("-o", "--out", metavar="FILE", help="where to write the profile (JSON)")],
    device: Annotated[str, typer.Option("--device", metavar="cpu|cuda", help="the device to measure")] = "cpu",
    model_override: Annotated[str | None, typer.Option(
        "--model", metavar="NAME", help="the model to run: smollm2 (the real GGUF, default) or a random-weight "
                                        "preset (tiny, smollm2-135m-random, ...)")] = None,
    requests: Annotated[int, typer.Option("--requests", metavar="N", help="requests in the calibration workload")]
    = 20,
    threads: Annotated[int, typer.Option("--threads", metavar="N", help="torch threads while measuring (the "
                                                                        "profile describes the engine at N)")] = 1,
    cpu_time: Annotated[bool, typer.Option("--cpu-time", help="time steps by the engine thread's CPU time, not the "
                                                               "wall clock (immune to other jobs; CPU only)")]
    = False,
) -> int:
    """Measure this machine's operators and per-step overhead; write the simulator's efficiency factors."""
    from kvscope.cli.commands.calibrate import run_calibrate

    return run_calibrate(out, device=device, model=model_override, requests=requests, threads=threads,
                         cpu_time=cpu_time)


@app.command(epilog=_examples(
    "kvscope serve smollm2",
    "kvscope serve smollm2 --max-num-seqs 64 --max-model-len 2048 --no-enable-prefix-caching",
    "kvscope serve ./SmolLM2-135M-Instruct-hf --served-model-name smol --kv-cache-memory-bytes 2000000000",
    "kvscope serve tiny --speculative-config '{\"method\": \"ngram\", \"num_speculative_tokens\": 3}'",
    "kvscope serve recipes/quickstart.yaml --port 8001 --max-waiting 64",
    "curl localhost:8000/v1/completions -H 'Content-Type: application/json' "
    "-d '{\"prompt\": \"The capital of France is\", \"max_tokens\": 16}'",
))
def serve(
    target: Annotated[str, typer.Argument(
        metavar="MODEL_OR_RECIPE", show_default=False,
        help="a model (smollm2, a .gguf file, a Hugging Face folder, a random-weight preset such as tiny), served "
             "with vLLM's CPU serving defaults, or a recipe YAML, served with its own values")],
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="port to listen on")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(
        "--served-model-name", metavar="NAME",
        help="the `model` clients name (default: the model as given, or the random preset)")] = None,
    max_model_len: Annotated[int | None, typer.Option(
        "--max-model-len", metavar="N", help="longest prompt + output (default: the model's context length)")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(
        "--max-num-seqs", metavar="N", help="requests in a batch at most (default 128 for a model)")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(
        "--max-num-batched-tokens", metavar="N", help="tokens in a step at most (default 2048 for a model)")] = None,
    block_size: Annotated[int | None, typer.Option("--block-size", metavar="N", help="tokens per KV block")] = None,
    enable_prefix_caching: Annotated[bool | None, typer.Option(
        "--enable-prefix-caching/--no-enable-prefix-caching", show_default=False,
        help="reuse cached KV blocks of a shared prompt prefix (default on for a model)")] = None,
    enable_chunked_prefill: Annotated[bool | None, typer.Option(
        "--enable-chunked-prefill/--no-enable-chunked-prefill", show_default=False,
        help="split long prompts across steps (default on for a model)")] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(
        "--gpu-memory-utilization", metavar="F", help="share of a simulated GPU's memory for weights and KV")]
    = None,
    kv_cache_memory_bytes: Annotated[int | None, typer.Option(
        "--kv-cache-memory-bytes", metavar="BYTES", help="the KV pool's size in bytes")] = None,
    num_gpu_blocks_override: Annotated[int | None, typer.Option(
        "--num-gpu-blocks-override", metavar="N", help="the KV pool's size in blocks")] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option(
        "--tensor-parallel-size", "-tp", metavar="N", help="GPUs one engine spans (a simulated device)")] = None,
    dtype: Annotated[str | None, typer.Option(
        "--dtype", metavar="auto|half|float16|bfloat16|float|float32", help="weights and activations")] = None,
    kv_cache_dtype: Annotated[str, typer.Option("--kv-cache-dtype", metavar="auto", help="the KV pool's dtype")]
    = "auto",
    seed: Annotated[int | None, typer.Option(
        "--seed", metavar="N", help="seed of the engine's generator (requests without a seed draw from it)")] = None,
    speculative_config: Annotated[str | None, typer.Option(
        "--speculative-config", metavar="JSON", help='speculative decoding, e.g. \'{"method": "ngram", '
                                                     '"num_speculative_tokens": 3}\' or \'{"model": PATH, ...}\'')]
    = None,
    scheduling_policy: Annotated[str, typer.Option("--scheduling-policy", metavar="fcfs", help="queue order")]
    = "fcfs",
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", help="no CUDA graphs")] = False,
    max_waiting: Annotated[int | None, typer.Option(
        "--max-waiting", metavar="N", help="answer 503 (Retry-After) while N requests wait")] = None,
    kernel_events: Annotated[bool, typer.Option(
        "--kernel-events", help="emit per-op kernel events (attach with ?kernels=1; costs engine time)")] = False,
    model_override: Annotated[str | None, typer.Option(
        "--model-override", metavar="NAME", help="serve another model: a random-weight preset (tiny, ...) or "
                                                 "smollm2")] = None,
    threads: Annotated[int | None, typer.Option("--threads", metavar="N", help="torch intra-op threads")] = None,
    text_events: Annotated[bool, typer.Option(
        "--text-events/--no-text-events", help="decode each step's text for an attached TUI's token stream")]
    = True,
    api_key: Annotated[list[str] | None, typer.Option(
        "--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on every path but /health, /version "
                                         "and /metrics (repeat for several keys; default: $VLLM_API_KEY)")] = None,
    max_request_body_bytes: Annotated[int | None, typer.Option(
        "--max-request-body-bytes", metavar="N", help="answer a larger request body with 413 (default: 4 MiB)",
        show_default=False)] = None,
) -> int:
    """An OpenAI-compatible server (vLLM's endpoints, flags, errors and /metrics) on a model or a recipe."""
    from kvscope.cli.commands.serve import run_serve
    from kvscope.cli.serve_args import EngineArgs

    engine_args = EngineArgs(max_model_len, max_num_seqs, max_num_batched_tokens, enable_chunked_prefill, block_size,
                             enable_prefix_caching, num_gpu_blocks_override, kv_cache_memory_bytes,
                             gpu_memory_utilization, tensor_parallel_size, dtype, speculative_config, kv_cache_dtype,
                             scheduling_policy, enforce_eager, seed)
    return run_serve(target, engine_args, host=host, port=port, served_model_name=served_model_name,
                     max_waiting=max_waiting, kernel_events=kernel_events, model=model_override, threads=threads,
                     text_events=text_events, api_key=api_key, max_request_body_bytes=max_request_body_bytes)


@bench_app.command("serve", epilog=_examples(
    "kvscope bench serve --base-url http://127.0.0.1:8000 --num-prompts 200 --random-input-len 256 "
    "--random-output-len 64",
    "kvscope bench serve --request-rate 8 --burstiness 0.5 --max-concurrency 16 --goodput ttft:300 tpot:50",
    "kvscope bench serve --dataset-name prefix_repetition --endpoint /v1/chat/completions --save-result",
))
def bench_serve(
    base_url: Annotated[str | None, typer.Option("--base-url", metavar="URL",
                                                 help="the server (default: http://HOST:PORT)")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    endpoint: Annotated[str, typer.Option("--endpoint", help="/v1/completions or /v1/chat/completions")]
    = "/v1/completions",
    model: Annotated[str | None, typer.Option("--model", help="default: the first of the server's /v1/models")]
    = None,
    dataset_name: Annotated[str, typer.Option("--dataset-name", help="random or prefix_repetition")] = "random",
    num_prompts: Annotated[int, typer.Option("--num-prompts")] = 1000,
    random_input_len: Annotated[int, typer.Option("--random-input-len")] = 1024,
    random_output_len: Annotated[int, typer.Option("--random-output-len")] = 128,
    random_range_ratio: Annotated[float, typer.Option("--random-range-ratio",
                                                      help="lengths uniform in [len*(1-r), len*(1+r)]")] = 0.0,
    random_prefix_len: Annotated[int, typer.Option("--random-prefix-len")] = 0,
    prefix_repetition_prefix_len: Annotated[int, typer.Option("--prefix-repetition-prefix-len")] = 256,
    prefix_repetition_suffix_len: Annotated[int, typer.Option("--prefix-repetition-suffix-len")] = 256,
    prefix_repetition_num_prefixes: Annotated[int, typer.Option("--prefix-repetition-num-prefixes")] = 10,
    prefix_repetition_output_len: Annotated[int, typer.Option("--prefix-repetition-output-len")] = 128,
    request_rate: Annotated[float, typer.Option("--request-rate", help="requests/s (inf: all at once)")]
    = float("inf"),
    burstiness: Annotated[float, typer.Option("--burstiness", help="gamma shape of the arrivals; 1 = Poisson")]
    = 1.0,
    max_concurrency: Annotated[int | None, typer.Option("--max-concurrency")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos")] = False,
    goodput: Annotated[list[str] | None, typer.Option("--goodput", metavar="NAME:MS",
                                                      help="SLOs: ttft:MS tpot:MS e2el:MS")] = None,
    percentile_metrics: Annotated[str, typer.Option("--percentile-metrics", help="of ttft,tpot,itl,e2el")]
    = "ttft,tpot,itl",
    metric_percentiles: Annotated[str, typer.Option("--metric-percentiles", help="e.g. 25,50,99")] = "99",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    save_result: Annotated[bool, typer.Option("--save-result", help="write the result JSON")] = False,
    result_dir: Annotated[str | None, typer.Option("--result-dir")] = None,
    result_filename: Annotated[str | None, typer.Option("--result-filename")] = None,
    api_key: ClientApiKey = None,
) -> int:
    """Load a running OpenAI-compatible server (kvscope's, vLLM's, any) with `vllm bench serve`'s options and
    report, plus the server's own /metrics deltas (preemptions, prefix-cache hit rate, peak KV use)."""
    from kvscope.serve.client.bench_serve import BenchServeArgs, run_bench_serve

    args = BenchServeArgs(base_url, host, port, endpoint, model, dataset_name, num_prompts, random_input_len,
                          random_output_len, random_range_ratio, random_prefix_len, prefix_repetition_prefix_len,
                          prefix_repetition_suffix_len, prefix_repetition_num_prefixes, prefix_repetition_output_len,
                          request_rate, burstiness, max_concurrency, ignore_eos, list(goodput or []),
                          percentile_metrics, metric_percentiles, seed, save_result, result_dir, result_filename,
                          api_key)
    run_bench_serve(args)
    return 0


@app.command(epilog=_examples(
    "kvscope attach http://127.0.0.1:8000",
    "kvscope attach http://gpu-box:8000 --kernels",
    "kvscope attach http://vllm-box:8000 --kv-events tcp://vllm-box:5557 --kv-replay tcp://vllm-box:5558",
))
def attach(
    url: Annotated[str, typer.Argument(metavar="URL", help="a running `kvscope serve` or vLLM server "
                                                           "(http://HOST:PORT)", show_default=False)],
    kernels: Annotated[bool, typer.Option("--kernels", help="also stream per-op kernel events (the server must run "
                                                            "with --kernel-events)")] = False,
    kv_events: Annotated[str | None, typer.Option(
        "--kv-events", metavar="tcp://HOST:PORT",
        help="metrics view: subscribe to vLLM's KV events (its --kv-events-config endpoint) for the cached "
             "blocks by hash")] = None,
    kv_replay: Annotated[str | None, typer.Option(
        "--kv-replay", metavar="tcp://HOST:PORT",
        help="metrics view: vLLM's KV-event replay endpoint, to fill sequence gaps and read its history")] = None,
    metrics_view: Annotated[bool, typer.Option("--metrics-view", help="the metrics view even where kvscope's "
                                                                      "plugin answers")] = False,
    api_key: ClientApiKey = None,
) -> int:
    """Open the live TUI on a running `kvscope serve` or vLLM server with kvscope's plugin: its block map,
    requests and metrics as they happen; pause / step / delay act on kvscope's engine. On a vLLM server
    without the plugin: a metrics view of its /metrics (and, with --kv-events, its cached blocks by hash)."""
    from kvscope.cli.commands.attach import run_attach

    return run_attach(url, kernels=kernels, api_key=api_key, kv_events=kv_events, kv_replay=kv_replay,
                      metrics_view=metrics_view)
