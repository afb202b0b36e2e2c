"""`kvscope serve MODEL_OR_RECIPE [vLLM's flags]`: the engine behind the OpenAI-compatible server (kvscope.serve).
The recipe (given, or made from the model and the flags: kvscope.cli.serve_args) has its workload not run:
requests come over HTTP; its `sampling` gives the defaults of unset fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvscope.cli.serve_args import EngineArgs, serve_recipe_for
from kvscope.errors import KVScopeError

if TYPE_CHECKING:
    from kvscope.engine.engine_client import EngineClient
    from kvscope.events.bus import EventBus


def run_serve(target: str, engine_args: EngineArgs | None = None, *, host: str, port: int,
              served_model_name: str | None, max_waiting: int | None, kernel_events: bool, model: str | None,
              threads: int | None, text_events: bool = True) -> int:
    if not 0 < port < 65536:
        raise KVScopeError(f"--port: expected 1..65535, got {port}")
    if max_waiting is not None and max_waiting < 1:
        raise KVScopeError(f"--max-waiting: must be at least 1, got {max_waiting}")
    if threads is not None and threads < 1:
        raise KVScopeError(f"--threads: must be at least 1, got {threads}")
    engine_args = engine_args or EngineArgs()
    recipe = serve_recipe_for(target, engine_args)
    if model is not None:
        from kvscope.cli.recipe_args import model_override

        recipe = recipe.with_overrides({"model": model_override(model)})
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from kvscope.serve.server.api_server import ServeOptions, serve_recipe

    options = ServeOptions(host, port, served_model_name, max_waiting, kernel_events,
                           on_engine=attach_text_events if text_events else None, seed=engine_args.seed)
    return serve_recipe(recipe, options)


def attach_text_events(engine: EngineClient, bus: EventBus) -> None:
    """TokenText events on the server's bus (the prompt, then each step's new text), for an attached TUI's
    token stream: the cli's text probe, over the server's engine."""
    from kvscope.cli.text_probe import TextProbe

    bus.subscribe(TextProbe(engine, bus))
