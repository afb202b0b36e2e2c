"""`kvscope run RECIPE`: the live TUI, or with --headless (or no terminal) a run and its summary."""

from __future__ import annotations

import argparse
import sys

from kvscope.cli.recipe_args import add_recipe_argument, recipe_from_args
from kvscope.engine.errors import KVScopeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    parser.add_argument("--headless", action="store_true", help="no TUI: run to the end and print a summary")
    parser.add_argument("--json", action="store_true", help="with --headless: the summary as one JSON object")
    parser.add_argument("--record", metavar="FILE", help="write every event to FILE (JSONL) while running")
    parser.add_argument("--no-nvtx", action="store_true",
                        help="no live NVTX ranges (on by default, domain 'kvscope': `nsys profile kvscope run ...`)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch intra-op threads on a CPU (default: every core headless; all but one under"
                             " the TUI, which needs a core of its own)")
    parser.add_argument("--show-outputs", action=argparse.BooleanOptionalAction, default=None,
                        help="print each request's generated text (default: on for prompt/chat workloads)")


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    if args.threads is not None and args.threads < 1:
        raise KVScopeError(f"--threads: must be at least 1, got {args.threads}")
    if not args.headless and not args.json:
        if sys.stdout.isatty():
            from kvscope.cli.live import run_live

            return run_live(recipe, record=args.record, nvtx=not args.no_nvtx, threads=args.threads)
        print("kvscope: standard output is not a terminal; running --headless", file=sys.stderr)
    from kvscope.cli.headless import run_headless

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    return run_headless(recipe, as_json=args.json, record=args.record, show_outputs=args.show_outputs,
                        nvtx=not args.no_nvtx)
