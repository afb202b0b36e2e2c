"""`kvscope serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) in vLLM's dialect on the engine, its
Prometheus metrics, the event stream `kvscope attach` opens the TUI over, and `kvscope bench serve`.

Layering: serve may import the engine and the inspector; only the cli imports serve.
"""
