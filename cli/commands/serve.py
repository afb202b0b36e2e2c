"""`kvscope serve MODEL_OR_RECIPE [vLLM's flags]`: the engine behind the OpenAI-compatible server (kvscope.serve).
The recipe (given, or made from the model and the flags: kvscope.cli.serve_args) has its workload not run:
requests come over HTTP; its `sampling` gives the defaults of unset fields.
`--api-key` (repeatable; else VLLM_API_KEY, as vLLM reads them) makes every path but /health, /version and
/metrics need a key; `--max-request-body-bytes` caps a request's body."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvscope.cli.serve_args import EngineArgs, serve_recipe_for
from kvscope.errors import KVScopeError

if TYPE_CHECKING:
    from kvscope.engine.engine_client import EngineClient
    from kvscope.events.bus import EventBus


def run_serve(target: str, engine_args: EngineArgs | None = None, *, host: str, port: int,
              served_model_name: str | None, max_waiting: int | None, kernel_events: bool, model: str | None,
              threads: int | None, text_events: bool = True, api_key: Sequence[str] | None = None,
              max_request_body_bytes: int | None = None) -> int:
    from kvscope.serve.server.auth import resolve_api_keys
    from kvscope.serve.server.body import DEFAULT_MAX_REQUEST_BODY_BYTES

    if not 0 < port < 65536:
        raise KVScopeError(f"--port: expected 1..65535, got {port}")
    if api_key is not None and any(not key.strip() for key in api_key):
        raise KVScopeError("--api-key: a key must not be empty")
    body_limit = DEFAULT_MAX_REQUEST_BODY_BYTES if max_request_body_bytes is None else max_request_body_bytes
    if body_limit < 1:
        raise KVScopeError(f"--max-request-body-bytes: must be at least 1, got {body_limit}")
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
                           on_engine=attach_text_events if text_events else None, seed=engine_args.seed,
                           api_keys=resolve_api_keys(api_key, os.environ), max_request_body_bytes=body_limit)
    return serve_recipe(recipe, options)


def attach_text_events(engine: EngineClient, bus: EventBus) -> None:
    """TokenText events on the server's bus (the prompt, then each step's new text), for an attached TUI's
    token stream: the cli's text probe, over the server's engine."""
    from kvscope.cli.text_probe import TextProbe

    bus.subscribe(TextProbe(engine, bus))
