"""`kvscope serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) in vLLM's dialect on the engine.

    api_server   the engine, the app and uvicorn, in a thread of their own (ServerThread) or in the foreground
    app          the FastAPI app: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics, ...
    engine_loop  the engine stepped in its own thread, never on the event loop
    protocol / responses / errors   request bodies, response shapes and vLLM's error shape
    body / offload   a body read under a size cap and parsed with a nesting limit; that work off the event loop
    auth         --api-key: vLLM's Bearer-token guard on everything but /health, /version and /metrics
    metrics      the Prometheus families vLLM exports
    event_hub / attach_routes / snapshot   the event stream (SSE) and state snapshots under /kvscope/v1/*

Imports the engine, the inspector, events and errors; never serve.client.
"""
