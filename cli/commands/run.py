"""`kvscope run RECIPE`: the live TUI, or with --headless (or no terminal) a run and its summary."""

from __future__ import annotations

import sys

from kvscope.config.recipe import load_recipe
from kvscope.errors import KVScopeError


def run_recipe(recipe_path: str, *, headless: bool = False, as_json: bool = False, record: str | None = None,
               nvtx: bool = True, threads: int | None = None, show_outputs: bool | None = None) -> int:
    recipe = load_recipe(recipe_path)
    if threads is not None and threads < 1:
        raise KVScopeError(f"--threads: must be at least 1, got {threads}")
    if record and recipe.deployment.disaggregated:
        raise KVScopeError(f"--record: {recipe.source} is a disaggregated deployment: `kvscope trace` records it "
                           f"(one events file per engine)")
    if not headless and not as_json:
        if sys.stdout.isatty():
            from kvscope.cli.commands.live import run_live

            return run_live(recipe, record=record, nvtx=nvtx, threads=threads)
        if sys.stderr.isatty():  # a note for the person at the terminal, not for a log or a pipeline
            print("kvscope: standard output is not a terminal; running --headless", file=sys.stderr)
    from kvscope.cli.commands.headless import run_headless

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return run_headless(recipe, as_json=as_json, record=record, show_outputs=show_outputs, nvtx=nvtx)
